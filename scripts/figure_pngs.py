"""Each figure of a study's report as a PNG, for a README or a paper (headless Chromium).

Usage: python scripts/figure_pngs.py studies/X.yaml OUTDIR [--width 1100] [--only pareto,calibration]

Every figure the report draws (same data, same confirmed means) is written as a page of its own
with plotly.js inline and captured by `chromium --headless --screenshot` at the figure's height:
nothing is downloaded and no image library is needed (Debian: `apt-get install chromium`).
Prints one line per PNG written.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class Refused(Exception):
    """Bad input: one line on stderr, exit code 2."""


def browser() -> str:
    """The first Chromium on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise Refused("no chromium on PATH; install it (Debian: apt-get install chromium)")


def main(argv: list[str] | None = None) -> int:
    from condconv_nas.errors import UserError

    try:
        return run(argv)
    except (Refused, UserError) as err:
        print(f"figure_pngs: {err}", file=sys.stderr)
        return 2


def run(argv: list[str] | None) -> int:
    """Write the PNGs; raises Refused or the package's UserError on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="studies/X.yaml")
    parser.add_argument("out", help="folder for the PNGs (created)")
    parser.add_argument("--width", type=int, default=1100, help="figure width in pixels")
    parser.add_argument("--only", default="", help="comma-separated figure ids (default: all)")
    parser.add_argument("--prefix", default="", help="file name prefix (default: the study's name)")
    args = parser.parse_args(argv)
    chromium = browser()

    from condconv_nas.analysis.headline import page_headline
    from condconv_nas.analysis.report import build_figures
    from condconv_nas.analysis.results import load_results
    from condconv_nas.search.config import load_study_config
    from condconv_nas.store.storage import open_storage

    cfg = load_study_config(args.study)
    results = load_results(open_storage(cfg.storage), cfg.name, cfg.storage)
    head = page_headline(results)
    latency = head.latency
    figures = build_figures(results, head.front, latency.front if latency else None)
    wanted = [k for k in args.only.split(",") if k] or list(figures)
    unknown = sorted(set(wanted) - set(figures))
    if unknown:
        raise Refused(f"no figure {unknown[0]!r} in this study; it has {', '.join(figures)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or cfg.name
    with tempfile.TemporaryDirectory() as tmp:
        for key in wanted:
            fig = figures[key]
            height = int(fig.layout.height or 500)
            fig.update_layout(width=args.width, height=height)
            page = Path(tmp) / f"{key}.html"
            page.write_text(fig.to_html(include_plotlyjs=True, full_html=True,
                                        config={"staticPlot": True}), encoding="utf-8")
            png = (out / f"{prefix}-{key}.png").resolve()
            # The page body has a small margin: a few pixels more than the figure keep it whole.
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--hide-scrollbars",
                            "--virtual-time-budget=10000", f"--window-size={args.width + 20},{height + 20}",
                            f"--screenshot={png}", page.as_uri()],
                           check=True, capture_output=True, timeout=120)
            print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
