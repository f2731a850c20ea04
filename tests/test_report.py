"""Report: frames from storage, the HTML's structure, CSVs, plain errors, and a headless render."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from condconv_nas.analysis.report import ReportError, build_figures, render_html, write_report
from condconv_nas.analysis.results import experts_by_block, load_results
from condconv_nas.cli import main
from condconv_nas.nn.cost import count_cost
from condconv_nas.search.baselines import baseline_grid
from condconv_nas.search.space import load_space
from condconv_nas.store.record import record_attrs, write_record
from condconv_nas.store.storage import open_storage
from tests.conftest import ROOT

TINY = ROOT / "search_spaces" / "tiny.yaml"


def _acc(madds: int, rng: np.random.Generator) -> float:
    # A made-up accuracy that grows with log MAdds, with seed noise.
    return float(min(0.99, 0.5 + 0.08 * np.log(madds / 1e6) + rng.normal(0, 0.005)))


def _ms(spec, madds: int) -> dict:
    """A made-up measured latency: MAdds, plus a fixed cost per CondConv block (its mixing)."""
    blocks = sum(b.condconv for b in spec.blocks())
    return {"latency_ms": madds / 2e6 + 0.3 * blocks, "latency_ms_p90": madds / 1.9e6 + 0.3 * blocks,
            "latency_isolated": True}


def fake_study(tmp_path: Path, baselines: bool = True, random: bool = False, search: int = 14,
               latency: bool = False) -> Path:
    """A study file and a journal holding hand-made trials shaped like the objective's."""
    study_file = tmp_path / "fake.yaml"
    study_file.write_text(yaml.safe_dump({"name": "fake", "space": str(TINY),
                                          "dataset": "synthetic", "trials": max(1, search)}))
    storage = open_storage(str(tmp_path / "fake.journal"))
    space = load_space(TINY)
    rng = np.random.default_rng(0)
    for name in ["fake"] + (["fake.random"] if random else []):
        study = optuna.create_study(study_name=name, storage=storage,
                                    directions=["maximize", "minimize"])
        study.set_user_attr("config", {"study_file": str(study_file), "budget_madds": 6_500_000,
                                       "dataset": "synthetic", "seed": 0})
        study.set_user_attr("madds_convention", "test")
        for i in range(search):
            trial = study.ask()
            spec = space.sample(trial)
            cost = count_cost(spec)
            write_record(trial, spec=spec.to_dict(), madds=cost.madds, params=cost.params,
                         versions={"optuna": optuna.__version__}, device="cpu",
                         **(_ms(spec, cost.madds) if latency else {}))
            if i == 3:  # one over-budget trial
                write_record(trial, infeasible=True)
                study.tell(trial, [0.0, float(cost.madds)])
            elif i == 5:
                write_record(trial, fail_reason="NonFiniteLossError: loss is nan")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, [_acc(cost.madds, rng) + 0.02, float(cost.madds)])
    if baselines:
        study = optuna.create_study(study_name="fake.baseline", storage=storage,
                                    directions=["maximize", "minimize"])
        for p in baseline_grid(space, points=3):
            for seed in range(2):
                study.add_trial(optuna.trial.create_trial(
                    values=[_acc(p.madds, rng), float(p.madds)],
                    user_attrs=record_attrs(spec=p.spec.to_dict(), madds=p.madds, family=p.family,
                                            multiplier=p.multiplier, seed=seed,
                                            baseline_label=p.label,
                                            params=count_cost(p.spec).params,
                                            **(_ms(p.spec, p.madds) if latency else {}))))
    return study_file


def results_of(study_file: Path):
    storage = open_storage(str(study_file.parent / "fake.journal"))
    return load_results(storage, "fake", "fake.journal")


def test_frames_hold_every_trial_with_its_family(tmp_path):
    res = results_of(fake_study(tmp_path, random=True))
    t = res.trials
    assert len(t) == 14 + 14 + len(baseline_grid(load_space(TINY), points=3)) * 2
    assert set(t.family) == {"search", "random", "width", "depth", "compound", "experts"}
    done = res.finished
    assert not (done.state != "COMPLETE").any() and done.feasible.all()
    assert len(done[done.family == "search"]) == 12  # minus one infeasible, one failed
    assert res.manifest["budget_madds"] == 6_500_000 and res.manifest["device"] == "cpu"
    assert set(res.importances) <= set(load_space(TINY).labels()) and res.importances
    # Most important first, ties by name: the same order on every run.
    imp = res.importances
    assert list(imp) == sorted(imp, key=lambda k: (-imp[k], k))


def test_page_structure(tmp_path):
    res = results_of(fake_study(tmp_path, random=True))
    figs = build_figures(res)
    assert set(figs) == {"pareto", "hypervolume", "placement", "importance", "edf"}
    page = render_html(res, figs)
    # Every figure is a plotly div, and plotly.js is embedded exactly once.
    assert len(re.findall(r'class="plotly-graph-div"', page)) == len(figs)
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:300]) == 1
    # Nothing is fetched from outside: no src/href to another host, and no URL outside plotly.js.
    assert not re.search(r"<(script|img|iframe)[^>]+src=|<link[^>]+href=", page)
    assert not re.search(r"https?://", page.replace(get_plotlyjs(), ""))
    # Families: one row per family, in a fixed order.
    families = re.search(r"<table id=families>(.*?)</table>", page, re.S).group(1)
    assert re.findall(r"<tr><td class=l>(\w+)</td>", families) == [
        "search", "random", "width", "depth", "compound", "experts"]
    # Nothing was confirmed: the page says so at the top and the headline holds no claim.
    assert page.index("Not confirmed: no claim is made") < page.index("id=headline")
    headline = re.search(r"<table id=headline>(.*?)</table>", page, re.S).group(1)
    assert "<td" not in headline
    # The trial table lists every trial, sortable.
    rows = re.search(r"<table class=sortable id=trials>.*?<tbody>(.*?)</tbody>", page, re.S)
    assert rows.group(1).count("<tr>") == len(res.trials)
    assert "over budget" in page and "loss is nan" in page
    assert "madds_convention" in page  # the manifest
    # The pareto figure has every trial and a front per search family, a curve per baseline.
    names = [tr.name for tr in figs["pareto"].data]
    assert names == ["search: all trials", "search: front (single runs)",
                     "random control: all trials", "random control: front (single runs)",
                     "baseline: width", "baseline: depth",
                     "baseline: compound", "baseline: experts"]


def test_placement_heatmap_holds_the_front_expert_counts(tmp_path):
    res = results_of(fake_study(tmp_path))
    fig = build_figures(res)["placement"]
    heat = fig.data[0]
    done = res.finished
    from condconv_nas.analysis.pareto import front

    f = front(done[done.family == "search"])
    assert len(heat.x) == len(f)
    for col, spec in enumerate(f.spec):
        experts = experts_by_block(json.loads(spec))  # reference: the spec's own blocks
        for row, name in enumerate(heat.y):
            assert heat.z[row][col] == experts.get(name)
    assert any(v for row in heat.z for v in row if v)  # some front block is a CondConv


def test_write_report_files_and_csvs(tmp_path):
    study_file = fake_study(tmp_path)
    out = tmp_path / "out" / "fake.html"
    paths = write_report(results_of(study_file), out).paths
    assert out.exists() and paths["trials_csv"].exists() and paths["fronts_csv"].exists()
    trials = pd.read_csv(paths["trials_csv"])
    assert len(trials) == 14 + len(baseline_grid(load_space(TINY), points=3)) * 2
    fronts = pd.read_csv(paths["fronts_csv"])
    assert set(fronts.family) == {"search", "width", "depth", "compound", "experts"}


def test_report_without_baselines_says_what_to_run(tmp_path):
    page = render_html(res := results_of(fake_study(tmp_path, baselines=False)), build_figures(res))
    assert "condconv-nas baselines" in page
    assert len(re.findall(r'class="plotly-graph-div"', page)) == 5


def test_report_on_study_without_finished_trials(tmp_path, capsys):
    study_file = fake_study(tmp_path, baselines=False, search=0)
    with pytest.raises(ReportError, match="no finished trials"):
        write_report(results_of(study_file), tmp_path / "x.html")
    assert main(["report", str(study_file), "-o", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished trials" in err[0]
    assert not (tmp_path / "x.html").exists()


def test_cli_report_errors(tmp_path, capsys):
    study_file = fake_study(tmp_path, baselines=False)
    other = tmp_path / "other.journal"
    assert main(["report", str(study_file), "--storage", str(other)]) == 2
    assert "does not exist" in capsys.readouterr().err and not other.exists()  # nothing created
    open_storage(str(other))  # an empty journal: the study is not in it
    assert main(["report", str(study_file), "--storage", str(other)]) == 2
    assert "not in storage" in capsys.readouterr().err
    assert main(["report", str(study_file), "-o", str(tmp_path / "x.png")]) == 2
    assert ".html" in capsys.readouterr().err
    assert main(["report", str(study_file), "-o", str(tmp_path / "r.html"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["html"].endswith("r.html")


_CHECK = """<script>window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push('error: '+e.message)});
window.addEventListener('unhandledrejection',function(e){window.__errors.push('rejection: '+e.reason)});
var _ce=console.error;console.error=function(){window.__errors.push('console: '+
Array.prototype.join.call(arguments,' '));_ce.apply(console,arguments)};
window.addEventListener('load',function(){setTimeout(function(){var p=document.createElement('pre');
p.id='render-check';p.textContent=JSON.stringify({errors:window.__errors,
plots:document.querySelectorAll('.js-plotly-plot').length,
svgs:document.querySelectorAll('.js-plotly-plot .main-svg').length});
document.body.appendChild(p)},1500)});</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CONDCONV_NAS_REQUIRE_CHROMIUM"),
                    reason="chromium is not installed (CI installs it)")
@pytest.mark.parametrize("latency", [False, True], ids=["madds", "with-latency"])
def test_page_renders_headless_without_console_errors(tmp_path, latency):
    browser = _chromium()
    assert browser, "CONDCONV_NAS_REQUIRE_CHROMIUM is set but no chromium is on PATH"
    res = results_of(fake_study(tmp_path, random=True, latency=latency))
    assert ("latency" in build_figures(res)) == latency
    paths = write_report(res, tmp_path / "page.html").paths
    page = paths["html"].read_text()
    # A listener placed first in <head> records every error the page raises while it renders.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _CHECK, 1))
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-dev-shm-usage", "--virtual-time-budget=20000",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the page did not finish loading: {run.stderr[-2000:]}"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["errors"] == []
    assert check["plots"] == len(build_figures(res)) and check["svgs"] >= check["plots"]


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CONDCONV_NAS_REQUIRE_CHROMIUM"),
                    reason="chromium is not installed (CI installs it)")
def test_figure_pngs_captures_each_figure_at_its_size(tmp_path):
    import struct
    import sys

    study = fake_study(tmp_path, random=True)
    script = ROOT / "scripts" / "figure_pngs.py"
    run = subprocess.run([sys.executable, str(script), str(study), str(tmp_path / "png"),
                          "--width", "800", "--only", "pareto,edf"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = build_figures(results_of(study))
    for key in ("pareto", "edf"):
        png = (tmp_path / "png" / f"fake-{key}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
        assert (width, height) == (820, (figures[key].layout.height or 500) + 20)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["fake-edf.png", "fake-pareto.png"]
    bad = subprocess.run([sys.executable, str(script), str(study), str(tmp_path / "png"),
                          "--only", "nope"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no figure 'nope'" in bad.stderr
    gone = subprocess.run([sys.executable, str(script), str(tmp_path / "missing.yaml"), "x"],
                          capture_output=True, text=True, timeout=300)
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1 and "missing.yaml" in gone.stderr


def test_a_fidelity_record_with_unknown_tau_renders(tmp_path):
    # A tau of too few or tied architectures is NaN, stored as null: shown as '–', not a crash.
    res = results_of(fake_study(tmp_path))
    res.fidelity = {"tau": None, "p_value": None, "n": 2, "epochs": 10, "verdict": "too few",
                    "tau_madds": 0.5, "tau_ci95": [None, None], "tau_madds_ci95": [0.1, 0.9]}
    page = render_html(res, build_figures(res))
    assert "architectures: <b>–</b> (95% bootstrap interval –" in page
    assert "reach τ 0.50 ([0.10, 0.90])" in page
