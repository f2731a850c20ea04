"""Runs shared between sibling studies: a baseline point that the calibration already trained at
the same seed and budget is copied, not trained again; its value equals a fresh training of the
same point in a study of another name; other seeds, budgets and settings are trained. And the
reference's own seed agreement, from every run at the reference budget, against scipy."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from scipy import stats

from condconv_nas.analysis.calibration import seed_agreement
from condconv_nas.analysis.results import calibration_of
from condconv_nas.cli import main
from condconv_nas.search.config import load_study_config
from condconv_nas.search.match import result_settings
from condconv_nas.store.settings import same_training
from condconv_nas.store.siblings import study_root
from condconv_nas.store.storage import open_storage
from tests.conftest import study_file

DONE = (TrialState.COMPLETE,)

# This module's studies: 500 training images, a one-budget calibration, width baselines.
COPIES = {"val_size": 1000, "holdout_size": 500, "trials": 2, "workers": 1,
          "baselines": {"families": ["width"], "points": 3, "seeds": 2},
          "calibration": {"epochs": [1], "train_images": [200], "reference": {"epochs": 1},
                          "archs": 4}}


def _config(folder: Path, name: str, **keys) -> Path:
    return study_file(folder, name, **{**COPIES, "storage": str(folder / f"{name}.journal"), **keys})


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """Study c, calibrated once (4 architectures x 1 epoch on 200 and on all images)."""
    path = _config(tmp_path_factory.mktemp("cal"), "c")
    assert main(["calibrate", str(path)]) == 0
    return path


def _copy_of(calibrated: Path, tmp_path: Path) -> Path:
    path = _config(tmp_path, "c")
    path.with_suffix(".journal").write_bytes(calibrated.with_suffix(".journal").read_bytes())
    return path


def test_baseline_points_the_calibration_trained_are_copied(calibrated, tmp_path, capsys, stored_trials):
    path = _copy_of(calibrated, tmp_path)
    ref = {(t.user_attrs["arch_key"], t.user_attrs["seed"]): t
           for t in stored_trials(path, "c.calibrate", states=DONE)
           if t.user_attrs.get("train_images") is None}
    short = {t.user_attrs["arch_key"] for t in stored_trials(path, "c.calibrate", states=DONE)
             if t.user_attrs.get("train_images") == 200}
    capsys.readouterr()
    assert main(["baselines", str(path)]) == 0
    lines = "".join(capsys.readouterr())
    runs = stored_trials(path, "c.baseline", states=DONE)
    copied = [t for t in runs if t.user_attrs.get("copied_from")]
    assert copied, "no baseline point was among the calibration's reference runs"
    for t in runs:
        a = t.user_attrs
        twin = ref.get((a["arch_key"], a["seed"]))  # the reference trains seed indices 0 and 1
        if twin is None:  # another seed, or a point the calibration did not pick: trained
            assert not a.get("copied_from") and a["epochs_run"] == 1
            continue
        assert a["copied_from"] == f"c.calibrate#{twin.number}"
        assert t.values[0] == twin.values[0] and a["curve"] == twin.user_attrs["curve"]
        assert f"(copied from c.calibrate #{twin.number})" in lines
    # Only the reference budget matches: the 1-epoch, 200-image runs are of the same archs.
    assert {t.user_attrs["arch_key"] for t in copied} <= short
    # The report's trial table names the copy's source.
    assert main(["search", str(path)]) == 0
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 0
    assert f"copied from c.calibrate #{copied[0].user_attrs['copied_from'].split('#')[1]}" in (
        tmp_path / "r.html").read_text()
    # The reference's own seed agreement now has two seeds of each baseline point: the tau and
    # pooled seed sd, recomputed by hand from the stored baseline runs.
    study = optuna.load_study(study_name="c.calibrate",
                              storage=open_storage(load_study_config(path).storage))
    ref_summary = calibration_of(study)["reference"]
    # One run per architecture and seed index: the calibration's reference runs and the
    # baseline runs (a copy of a reference run is that run).
    by_seed: dict[int, dict] = {0: {}, 1: {}}
    for t in [*ref.values(), *runs]:
        by_seed[t.user_attrs["seed"]].setdefault(t.user_attrs["arch_key"], t.values[0])
    keys = sorted(by_seed[1])
    assert ref_summary["seed_archs"] == len(keys) >= 3 and ref_summary["seed_pairs"] == 1
    tau = stats.kendalltau([by_seed[0][k] for k in keys], [by_seed[1][k] for k in keys])[0]
    assert ref_summary["seed_tau"] == pytest.approx(tau)
    sq = sum((by_seed[0][k] - by_seed[1][k]) ** 2 / 2 for k in keys)  # each pair: 1 dof
    assert ref_summary["seed_sd"] == pytest.approx(math.sqrt(sq / len(keys)))
    # Independent reference: the same points trained from scratch in a study of another name
    # (not a sibling, so nothing is copied) reach exactly the copied values (CPU is exact).
    other = _config(tmp_path, "d", baselines={"families": ["width"], "points": 3, "seeds": 1})
    assert main(["baselines", str(other)]) == 0
    fresh = {t.user_attrs["arch_key"]: t for t in stored_trials(other, "d.baseline", states=DONE)}
    assert all(not t.user_attrs.get("copied_from") for t in fresh.values())
    for t in (t for t in copied if t.user_attrs["seed"] == 0):  # d trained seed index 0 only
        assert fresh[t.user_attrs["arch_key"]].values[0] == t.values[0]


def test_other_training_settings_are_never_copied(calibrated, tmp_path, stored_trials):
    """The baselines of a study whose calibration trained on another split train their own."""
    path = _copy_of(calibrated, tmp_path)
    # Same storage and root name, another validation split: X.baseline is a new study under
    # settings the calibration did not train with.
    cfg = yaml.safe_load(path.read_text())
    cfg["val_size"] = 1400
    cfg["baselines"]["seeds"] = 1
    path.write_text(yaml.safe_dump(cfg))
    assert main(["baselines", str(path)]) == 0
    runs = stored_trials(path, "c.baseline", states=DONE)
    assert runs and all(not t.user_attrs.get("copied_from") for t in runs)


@pytest.mark.parametrize("change, same", [
    ({"recipe": {"epochs": 9}}, True),       # each run's epochs are compared with the run
    ({"recipe": {"compile": True}}, True),   # how it executes, not what it computes
    ({"trials": 50, "sampler": "random", "workers": 2}, True),
    ({"recipe": {"lr": 0.1}}, False),
    ({"recipe": {"batch_size": 32}}, False),
    ({"seed": 1}, False),
    ({"val_size": 1400}, False),
    ({"train_limit": 300}, False),
    ({"dataset": "synthetic", "data_dir": "/elsewhere"}, False),
])
def test_same_training_compares_what_changes_a_result(tmp_path, change, same):
    base = result_settings(load_study_config(_config(tmp_path, "a")))
    data = yaml.safe_load(_config(tmp_path, "a").read_text())
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    now = result_settings(load_study_config(tmp_path / "b.yaml"))
    assert same_training(base, now) is same


def test_study_root_strips_one_sibling_suffix():
    assert [study_root(n) for n in ("x", "x.baseline", "x.confirm", "x.calibrate", "x.random",
                                    "x.baseline.random", "x.y")] == [
        "x", "x", "x", "x", "x", "x.baseline", "x.y"]


def test_seed_agreement_by_hand():
    """Three seeds of four architectures, one missing: mean tau of the three seed pairs over the
    architectures each pair shares, and the pooled within-architecture sd."""
    acc = {"a": [0.90, 0.92, 0.91], "b": [0.93, 0.91, None], "c": [0.95, 0.96, 0.97],
           "d": [0.91, 0.90, 0.94]}
    rows = [{"arch_key": k, "seed": s, "val_acc": v} for k, vs in acc.items()
            for s, v in enumerate(vs) if v is not None]
    got = seed_agreement(pd.DataFrame(rows))
    taus = []
    for i, j in ((0, 1), (0, 2), (1, 2)):
        keys = [k for k in acc if acc[k][i] is not None and acc[k][j] is not None]
        taus.append(stats.kendalltau([acc[k][i] for k in keys], [acc[k][j] for k in keys])[0])
    assert got["seed_tau"] == pytest.approx(sum(taus) / 3) and got["seed_pairs"] == 3
    groups = [[v for v in vs if v is not None] for vs in acc.values()]
    ss = sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups)
    assert got["seed_sd"] == pytest.approx(math.sqrt(ss / sum(len(g) - 1 for g in groups)))
    assert got["seed_archs"] == 4
    one = seed_agreement(pd.DataFrame([r for r in rows if r["seed"] == 0]))
    assert one["seed_pairs"] == 0 and math.isnan(one["seed_tau"]) and math.isnan(one["seed_sd"])
