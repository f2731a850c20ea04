"""Calibration: the ladder, the spread of architectures, the summary against scipy's Kendall tau
computed by hand from the stored runs, the whole command (resumable, JSON, report figure), and
bad calibration settings as one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from scipy import stats

from condconv_nas.calibration import Calibration, spread, study_lines, summarise, verdict_line
from condconv_nas.cli import main
from condconv_nas.config import StudyError, load_study_config
from condconv_nas.storage import open_storage

ROOT = Path(__file__).parent.parent


def test_ladder_is_the_grid_without_the_reference_cheapest_first():
    cal = Calibration(epochs=(1, 4), train_images=(100, None), reference=(4, None))
    assert cal.ladder() == [(1, 100), (4, 100), (1, None)]
    assert cal.budgets()[-1] == (4, None) and len(cal.budgets()) == 4
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_spread_is_even_on_log_madds():
    madds = [1e6 * 2 ** i for i in range(9)]  # log-spaced: every other one is even
    assert spread(madds, 5) == [0, 2, 4, 6, 8]
    assert spread(madds, 20) == list(range(9))
    assert spread([5.0, 1.0, 3.0], 1) == [2]  # the middle one


def _runs(accs_by_budget: dict, seconds: dict, madds: list, params: list) -> pd.DataFrame:
    rows = []
    for (e, n), accs in accs_by_budget.items():
        for i, acc in enumerate(accs):
            rows.append({"arch_key": f"a{i}", "epochs": e, "train_images": n, "val_acc": acc,
                         "seconds": seconds[(e, n)], "madds": madds[i], "params": params[i]})
    return pd.DataFrame(rows)


def test_summary_against_scipy_and_the_recommendation_rule():
    cal = Calibration(epochs=(1, 2), train_images=(100, None), reference=(3, None), min_tau=0.7)
    ref = [0.60, 0.70, 0.65, 0.80, 0.75, 0.90]
    accs = {(1, 100): [0.3, 0.2, 0.4, 0.1, 0.5, 0.6],      # poor ranking, cheapest
            (2, 100): [0.50, 0.62, 0.55, 0.70, 0.66, 0.64],  # good, cheap
            (1, None): [0.55, 0.66, 0.60, 0.77, 0.70, 0.88],  # perfect, dearer
            (2, None): [0.58, 0.69, 0.63, 0.79, 0.74, 0.89], (3, None): ref}
    seconds = {(1, 100): 1.0, (2, 100): 2.0, (1, None): 10.0, (2, None): 20.0, (3, None): 30.0}
    madds = [1, 3, 2, 5, 6, 4]  # tau 0.6 with the reference
    params = [6, 5, 4, 3, 2, 1]
    out = summarise(_runs(accs, seconds, madds, params), cal)
    by = {(b["epochs"], b["train_images"]): b for b in out["budgets"]}
    for budget, b in by.items():
        tau, p = stats.kendalltau(accs[budget], ref)
        assert b["tau"] == pytest.approx(tau) and b["p_value"] == pytest.approx(p)
        assert b["tau_madds"] == pytest.approx(stats.kendalltau(madds, ref)[0])
        assert b["tau_params"] == pytest.approx(stats.kendalltau(params, ref)[0])
        assert b["seconds_per_arch"] == seconds[budget] and b["archs"] == 6
    # (2, 100): tau 0.73 >= 0.7 and above MAdds alone (0.6): the cheapest that qualifies.
    assert by[(2, 100)]["tau"] >= 0.7 > by[(1, 100)]["tau"]
    assert by[(2, 100)]["tau"] > by[(2, 100)]["tau_madds"]
    assert out["recommended"]["epochs"] == 2 and out["recommended"]["train_images"] == 100
    assert out["reference"]["archs"] == 6 and out["reference"]["seconds_per_arch"] == 30.0
    assert (out["reference"]["acc_min"], out["reference"]["acc_max"]) == (min(ref), max(ref))
    assert study_lines(out["recommended"], 1000) == ["train_limit: 100",
                                                      "recipe: {epochs: 2}    # keep your other recipe keys"]
    # A stricter bar that only a perfect ranking meets: the dearer budget.
    strict = summarise(_runs(accs, seconds, madds, params), Calibration(
        epochs=(1, 2), train_images=(100, None), reference=(3, None), min_tau=0.95))
    assert (strict["recommended"]["epochs"], strict["recommended"]["train_images"]) == (1, None)
    # The verdict names the recommended budget and the bar it passed.
    assert f"tau reaches 0.95 and beats MAdds alone is {strict['recommended']['label']} " \
        f"(tau {by[(1, None)]['tau']:.2f}" in verdict_line(strict)


def test_no_recommendation_when_madds_alone_rank_as_well():
    cal = Calibration(epochs=(1,), train_images=(100,), reference=(3, None), min_tau=0.5)
    ref = [0.1, 0.2, 0.3, 0.4, 0.5]
    out = summarise(_runs({(1, 100): ref, (3, None): ref}, {(1, 100): 1.0, (3, None): 9.0},
                          [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), cal)
    assert out["budgets"][0]["tau"] == pytest.approx(1.0)
    assert out["budgets"][0]["tau_madds"] == pytest.approx(1.0)
    assert out["recommended"] is None  # no better than counting MAdds
    assert verdict_line(out).startswith("No budget reaches tau 0.5 and beats MAdds alone")


def _study(tmp_path: Path, **kw) -> Path:
    data = {"name": "c", "space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "synthetic",
            "val_size": 1500,  # 500 training images: "all" stays quick
            "recipe": {"batch_size": 64, "lr": 0.2, "epochs": 1}, "trials": 2, "seed": 0,
            "workers": 1, "baselines": {"families": ["width", "depth"], "points": 3},
            "calibration": {"epochs": [1], "train_images": [200, "all"],
                            "reference": {"epochs": 2}, "archs": 4}}
    data.update(kw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_calibrate_end_to_end_resumes_and_reports(tmp_path, capsys):
    path = _study(tmp_path)
    assert main(["calibrate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(b["epochs"], b["train_images"]) for b in out["budgets"]] == [(1, 200), (1, None)]
    assert set(out["budgets"][0]) >= {"epochs", "train_images", "tau", "p_value", "tau_madds",
                                      "tau_params", "seconds_per_arch"}
    assert "recommended" in out
    # The stored runs, read back by hand: 4 architectures x 3 budgets, each trained as told.
    cfg = load_study_config(path)
    study = optuna.load_study(study_name="c.calibrate", storage=open_storage(cfg.storage))
    runs = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(runs) == 12 and len({t.user_attrs["arch_key"] for t in runs}) == 4
    for t in runs:
        assert t.user_attrs["epochs_run"] == t.user_attrs["epochs"]
    ref = {t.user_attrs["arch_key"]: t.values[0] for t in runs if t.user_attrs["epochs"] == 2}
    small = {t.user_attrs["arch_key"]: t.values[0] for t in runs
             if t.user_attrs["epochs"] == 1 and t.user_attrs.get("train_images") == 200}
    keys = sorted(ref)
    tau = stats.kendalltau([small[k] for k in keys], [ref[k] for k in keys])[0]
    first = out["budgets"][0]["tau"]
    assert (first is None and math.isnan(tau)) or first == pytest.approx(tau)
    madds = sorted({t.user_attrs["madds"] for t in runs})
    assert len(madds) == 4  # distinct architectures spread over MAdds
    # Resume: nothing new to train, the same summary.
    assert main(["calibrate", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["budgets"] == out["budgets"]
    assert "0 runs newly queued, 0 to run" in captured.err
    # The text table names the span of the reference accuracies it ranks against.
    assert main(["calibrate", str(path)]) == 0
    ref = out["reference"]
    assert f"accuracies {ref['acc_min']:.4f}-{ref['acc_max']:.4f}" in capsys.readouterr().out
    # The report shows the calibration figure and table once the search exists.
    assert main(["search", str(path)]) == 0
    html_out = tmp_path / "r.html"
    assert main(["report", str(path), "-o", str(html_out)]) == 0
    page = html_out.read_text()
    assert "id=calibration" in page and "fig-calibration" in page and "1 ep x 200" in page
    # One seed per architecture: the reference's own agreement is said to be unknown.
    assert "seed agreement is unknown" in page and out["reference"]["seed_pairs"] == 0


@pytest.mark.parametrize("cal, needle", [
    ("calibration: 3", "calibration: must be a mapping"),
    ("calibration: {epochs: []}", "calibration.epochs: must be a non-empty list"),
    ("calibration: {epochs: [0]}", "calibration.epochs: must be an integer >= 1"),
    ("calibration: {train_images: [many]}", "calibration.train_images: must be an integer"),
    ("calibration: {epochs: [20], reference: {epochs: 8}}", "exceeds the reference"),
    ("calibration: {train_images: [500], reference: {train_images: 100}}", "exceeds the reference"),
    ("calibration: {min_tau: 1.5}", "calibration.min_tau: must be a number in (0, 1]"),
    ("calibration: {archs: 3}", "calibration.archs: must be an integer >= 4"),
    ("calibration: {ladder: [1]}", "calibration: must be a mapping"),
    ("calibration: {epochs: [4], train_images: [all], reference: {epochs: 4}}", "no budget below"),
])
def test_bad_calibration_settings_are_one_line_exit_2(tmp_path, capsys, cal, needle):
    path = tmp_path / "b.yaml"
    path.write_text(f"name: b\nspace: {ROOT / 'search_spaces' / 'tiny.yaml'}\n"
                    f"dataset: synthetic\ntrials: 2\n{cal}\n")
    with pytest.raises(StudyError):
        load_study_config(path)
    assert main(["calibrate", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.yaml"]  # nothing created


def test_more_images_than_the_dataset_is_an_error_before_anything_is_stored(tmp_path, capsys):
    path = _study(tmp_path, calibration={"train_images": [5000], "epochs": [1],
                                         "reference": {"epochs": 2}})
    assert main(["calibrate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "5000 exceeds the" in err and err.count("\n") == 1
    assert not (tmp_path / "c.journal").exists()


def test_too_few_archs_flag(tmp_path, capsys):
    assert main(["calibrate", str(_study(tmp_path)), "--archs", "2"]) == 2
    assert "--archs: must be >= 4" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_calibrate_on_databases(tmp_path, capsys, kind):
    from tests.test_faults import _pg_url

    url = f"sqlite:///{tmp_path / 'c.db'}" if kind == "sqlite" else _pg_url()
    name = f"c{abs(hash(str(tmp_path))) % 10**8}"  # a fresh study on a shared server
    path = _study(tmp_path, name=name, storage=url,
                  calibration={"epochs": [1], "train_images": [100],
                               "reference": {"epochs": 1, "train_images": 200}, "archs": 4})
    assert main(["calibrate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"]["archs"] == 4 and out["budgets"][0]["archs"] == 4
    study = optuna.load_study(study_name=f"{name}.calibrate", storage=open_storage(url))
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 8
