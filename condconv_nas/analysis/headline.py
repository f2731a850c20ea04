"""The headline, computed once per page, and as the CLI prints it and `report --json` gives it.

`page_headline` runs the claims of both cost axes under one Holm (claims.study_headline);
`headline_lines` and `headline_json` read that one `Headline`, never a second computation.
"""

from __future__ import annotations

from typing import Any

from ..store.record import RANDOM, SEARCH
from . import pareto
from .claims import Headline, study_headline
from .figures import FAMILY_LABELS
from .results import StudyResults

__all__ = ["axes_agree", "headline_json", "headline_lines", "page_headline"]


def page_headline(results: StudyResults) -> Headline:
    """The page's claims, computed once: the MAdds axis and, when latency was measured, the
    latency axis, under one Holm (see claims.study_headline)."""
    timed = pareto.latency_axis(results.finished)
    latency = None if timed.empty else (timed, pareto.latency_axis(results.confirmed))
    holdout = (results.manifest.get("holdout") or {}).get("split")
    return study_headline(results.finished, results.confirmed, latency,
                          split="test" if holdout == "test" else "holdout")


def axes_agree(head: Headline, latency: Headline) -> tuple[bool, list[str]]:
    """Whether every (front, family) verdict is the same at matched MAdds and matched latency."""
    changed = []
    for source, claims in head.sources.items():
        for family, c in claims.items():
            other = latency.sources.get(source, {}).get(family)
            if other is not None and c.verdict != other.verdict:
                changed.append(f"{FAMILY_LABELS.get(source, source)} against {family}: "
                               f"{c.verdict} at matched MAdds, {other.verdict} at matched "
                               "latency")
    return not changed, changed


def headline_lines(head: Headline, study_file: str) -> list[str]:
    """The search's claims as the CLI prints them, one line per family (and why none, if so)."""
    lines = []
    if not head.confirmed:
        lines.append(f"not confirmed: no claim is made; run `condconv-nas confirm {study_file}`")
    elif not head.holdout:
        lines.append("not confirmed on a holdout split: no claim is made (a study stored before "
                     "holdout splits existed)")
    for family, c in head.sources.get(SEARCH, {}).items():
        if c.reason:
            lines.append(f"search vs {family} ({c.split or 'holdout'}): {c.verdict}")
            continue
        lo, hi = c.gain_ci95
        ci = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None else ""
        lines.append(f"search vs {family} ({c.split}): {100 * c.gain_mean:+.2f} pp{ci} at "
                     f"matched MAdds over {c.units} front points, {c.verdict} (Holm p "
                     f"{c.p_holm:.3g})")
    return lines


def _view_json(view: Headline) -> dict:
    return {"headline": {f: c.to_dict() for f, c in view.sources.get(SEARCH, {}).items()},
            "control": {f: c.to_dict() for f, c in view.sources.get(RANDOM, {}).items()}}


def headline_json(results: StudyResults, head: Headline) -> dict[str, Any]:
    """The headline as data (`report --json`): per family the search's tested claim (with its
    method and split), the control's, whether the front is confirmed on a holdout split, and the
    proxy-fidelity verdict."""
    fid = results.fidelity or {}
    latency = head.latency
    return {"confirmed": head.confirmed, "holdout": head.holdout, **_view_json(head),
            "front": head.front, "search_order": results.manifest.get("search_order"),
            "latency": None if latency is None else {
                **_view_json(latency), "same_conclusion": axes_agree(head, latency)[0]},
            "fidelity": {k: fid.get(k) for k in ("tau", "p_value", "n", "epochs", "verdict",
                                                 "tau_madds", "tau_params", "tau_ci95",
                                                 "tau_madds_ci95", "tau_gain_ci95")}
            if fid else None}
