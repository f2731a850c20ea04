"""Calibration: the ladder (fractions of the training split resolved at run time), the spread of
architectures, the summary against scipy's Kendall tau and a bootstrap recomputed by hand with
scipy, the qualifying rule (interval of tau minus MAdds' tau above zero, the reference ranking
itself), the whole command (resumable, seeds kept apart, JSON, report figure), and bad
calibration settings as one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from scipy import stats

from condconv_nas.analysis.calibration import (
    RESAMPLES,
    Calibration,
    bootstrap_taus,
    resample_taus,
    study_lines,
    summarise,
    verdict_line,
)
from condconv_nas.cli import main
from condconv_nas.search import calibration as ladder_module
from condconv_nas.search.calibration import spread
from condconv_nas.search.config import StudyError, load_study_config
from condconv_nas.store.attrs import whole
from condconv_nas.store.storage import open_storage
from tests.conftest import ROOT, defaults

REF = (3, None)  # the reference budget of the summary tests


def test_ladder_is_the_grid_without_the_reference_cheapest_first():
    cal = Calibration(epochs=(1, 4), train_images=(100, None), reference=(4, None))
    assert cal.ladder() == [(1, 100), (4, 100), (1, None)]
    assert cal.budgets()[-1] == (4, None) and len(cal.budgets()) == 4
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_default_ladder_is_fractions_of_the_split_resolved_at_run_time():
    cal = Calibration()
    assert cal.written_counts() == []  # nothing the user wrote can exceed the split
    resolved = cal.resolve(900)  # 1,400 images, 500 held for validation
    assert resolved.train_images == (112, 225, 450, None)  # 1/8, 1/4, 1/2 of 900 (rounded), all
    assert resolved.reference == (16, None) and len(resolved.ladder()) == 16
    assert Calibration.from_dict(resolved.to_dict()) == resolved  # what is stored is what ran
    # Counts the user wrote stay counts; fractions that coincide on a tiny split are one budget.
    mixed = Calibration(train_images=(300, 0.5, None), reference=(16, 0.75)).resolve(900)
    assert mixed.train_images == (300, 450, None) and mixed.reference == (16, 675)
    assert Calibration(train_images=(0.1, 0.12, None)).resolve(10).train_images == (1, None)


def test_a_calibration_stored_before_seeds_were_kept_apart_reads_as_one_seed():
    old = {"epochs": [1, 2], "train_images": [4000, None], "reference": [16, None],
           "min_tau": 0.7, "archs": 10}
    cal = Calibration.from_dict(old)
    assert (cal.reference_seeds, cal.proxy_seed) == (1, 0) and cal.seeds_overlap()
    assert not Calibration().seeds_overlap()


def test_spread_is_even_on_log_madds():
    madds = [1e6 * 2 ** i for i in range(9)]  # log-spaced: every other one is even
    assert spread(madds, 5) == [0, 2, 4, 6, 8]
    assert spread(madds, 20) == list(range(9))
    assert spread([5.0, 1.0, 3.0], 1) == [2]  # the middle one


def _perm(n: int, inversions: int) -> list[int]:
    """A permutation of range(n) with exactly `inversions` inversions, spread over the items:
    seeded random adjacent swaps from the identity, each adding one."""
    rng = np.random.default_rng(inversions)
    out = list(range(n))
    for _ in range(inversions):
        i = int(rng.choice([i for i in range(n - 1) if out[i] < out[i + 1]]))
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _runs(ref: dict[int, list], proxies: dict[tuple, list], madds: list, params: list | None = None,
          seconds: dict | None = None, proxy_seed: int = 2) -> pd.DataFrame:
    """Runs as `calibration_of` hands them over: the reference at its seeds, the ladder at one."""
    params = params or madds
    rows = [{"arch_key": f"a{i:02d}", "epochs": REF[0], "train_images": REF[1], "val_acc": acc,
             "seconds": 30.0, "madds": madds[i], "params": params[i], "seed": seed}
            for seed, accs in ref.items() for i, acc in enumerate(accs)]
    rows += [{"arch_key": f"a{i:02d}", "epochs": e, "train_images": n, "val_acc": acc,
              "seconds": (seconds or {}).get((e, n), float(e)), "madds": madds[i],
              "params": params[i], "seed": proxy_seed}
             for (e, n), accs in proxies.items() for i, acc in enumerate(accs)]
    return pd.DataFrame(rows)


def _hand_bootstrap(proxy: list, ref: list, madds: list) -> tuple[list, list]:
    """The paired bootstrap recomputed with scipy on the same resamples: tau's and the gain's
    95% percentile intervals (a resample with a constant ranking: tau 0)."""
    n = len(ref)
    idx = np.random.default_rng(0).integers(0, n, (RESAMPLES, n))
    x, y, m = (np.asarray(v, dtype=float) for v in (proxy, ref, madds))
    taus = np.nan_to_num([[stats.kendalltau(v[i], y[i])[0] for i in idx] for v in (x, m)])
    return (list(np.percentile(taus[0], [2.5, 97.5])),
            list(np.percentile(taus[0] - taus[1], [2.5, 97.5])))


def test_resampled_taus_equal_scipys_ties_included():
    rng = np.random.default_rng(3)
    target, ranking = rng.normal(size=9), rng.integers(0, 4, 9)  # ties in the ranking
    idx = rng.integers(0, 9, (60, 9))  # and ties from repeated architectures
    ours = resample_taus(target, [ranking], idx)[0]
    for t, i in zip(ours, idx):
        tau = stats.kendalltau(ranking[i], target[i])[0]
        assert t == pytest.approx(0.0 if math.isnan(tau) else tau)
    assert (bootstrap_taus(target, [ranking]) == bootstrap_taus(target, [ranking])).all()


def test_summary_against_scipy_and_a_bootstrap_by_hand():
    cal = Calibration(epochs=(1, 2), train_images=(100, None), reference=REF, min_archs=4)
    seed0 = [0.60, 0.70, 0.65, 0.80, 0.75, 0.90, 0.55, 0.85]
    seed1 = [0.62, 0.69, 0.66, 0.79, 0.77, 0.88, 0.50, 0.86]
    ref = [(a + b) / 2 for a, b in zip(seed0, seed1)]  # the reference: its mean over seeds
    accs = {(1, 100): [0.3, 0.2, 0.4, 0.1, 0.5, 0.6, 0.35, 0.45],
            (2, 100): [0.50, 0.62, 0.55, 0.70, 0.66, 0.64, 0.40, 0.69],
            (1, None): [0.55, 0.66, 0.60, 0.77, 0.70, 0.88, 0.50, 0.80],
            (2, None): [0.58, 0.69, 0.63, 0.79, 0.74, 0.89, 0.52, 0.83]}
    madds = [1, 3, 2, 5, 6, 4, 8, 7]
    params = [6, 5, 4, 3, 2, 1, 8, 7]
    runs = _runs({0: seed0, 1: seed1}, accs, madds, params)
    # A proxy run at a reference seed is not the ladder's: it must change nothing.
    leak = _runs({}, {(1, 100): ref}, madds, params, proxy_seed=0)
    out = summarise(pd.concat([runs, leak]), cal)
    by = {(b["epochs"], b["train_images"]): b for b in out["budgets"]}
    assert set(by) == set(accs)
    for budget, b in by.items():
        greater = stats.kendalltau(accs[budget], ref, alternative="greater")
        assert b["tau"] == pytest.approx(greater.statistic)
        assert b["p_value"] == pytest.approx(greater.pvalue)  # one-sided: tau > 0
        assert b["tau_madds"] == pytest.approx(stats.kendalltau(madds, ref)[0])
        assert b["tau_params"] == pytest.approx(stats.kendalltau(params, ref)[0])
        assert b["seconds_per_arch"] == budget[0] and b["archs"] == 8
        assert b["tau_ci95"][0] - 1e-9 <= b["tau"] <= b["tau_ci95"][1] + 1e-9
        assert b["qualifies"] == (b["tau"] >= 0.7 and b["p_value"] < 0.05
                                  and b["tau_gain_ci95"][0] > 0)
    for budget in ((2, 100),):  # the intervals, by scipy on the same resamples
        tau_ci, gain_ci = _hand_bootstrap(accs[budget], ref, madds)
        assert by[budget]["tau_ci95"] == pytest.approx(tau_ci)
        assert by[budget]["tau_gain_ci95"] == pytest.approx(gain_ci)
    assert out["reference"]["archs"] == 8 and out["reference"]["seconds_per_arch"] == 30.0
    assert (out["reference"]["acc_min"], out["reference"]["acc_max"]) == (min(ref), max(ref))
    # The reference against itself: its two seeds, by scipy.
    assert out["reference_seed_tau"] == pytest.approx(stats.kendalltau(seed0, seed1)[0])
    assert out["reference"]["seeds"] == [0, 1] and isinstance(out["reason"], str)


N = 16  # architectures of the recommendation tests: tau = 1 - 4 d / (N (N - 1)), d inversions
ACC = [0.5 + 0.01 * i for i in range(N)]


def _accs(inversions: int) -> list[float]:
    return [ACC[i] for i in _perm(N, inversions)]


def test_a_tau_of_0_8_qualifies_only_when_it_beats_madds_by_more_than_chance():
    cal = Calibration(epochs=(1,), train_images=(100, None), reference=REF)
    ref = {0: ACC, 1: [a + 0.001 for a in ACC]}  # the reference ranks itself perfectly
    proxies = {(1, 100): _accs(12), (1, None): ACC}  # tau 0.8 (cheap) and 1.0 (dear)
    seconds = {(1, 100): 1.0, (1, None): 10.0}
    assert stats.kendalltau(_accs(12), ACC)[0] == pytest.approx(0.8)
    # MAdds alone rank nearly as well (tau 0.7): the difference interval reaches zero.
    near = summarise(_runs(ref, proxies, [m * 1e6 for m in _perm(N, 18)], seconds=seconds), cal)
    cheap = near["budgets"][0]
    assert (cheap["label"], cheap["tau_madds"]) == ("1 ep x 100", pytest.approx(0.7))
    assert cheap["tau"] == pytest.approx(0.8) and cheap["p_value"] < 0.001
    gain = _hand_bootstrap(_accs(12), ACC, _perm(N, 18))[1]
    assert gain[0] <= 0 and cheap["tau_gain_ci95"] == pytest.approx(gain)
    assert not cheap["qualifies"]
    # Only the dearer, perfect budget beats MAdds by more than the resampling spread.
    assert near["recommended"]["label"] == "1 ep x all" and near["budgets"][1]["qualifies"]
    # MAdds alone rank at chance (tau 0): the cheap budget qualifies and is recommended.
    far = summarise(_runs(ref, proxies, [m * 1e6 for m in _perm(N, 60)], seconds=seconds), cal)
    assert far["budgets"][0]["tau_madds"] == pytest.approx(0.0)
    assert far["recommended"]["label"] == "1 ep x 100"
    assert verdict_line(far).startswith("1 ep x 100 is the cheapest budget that qualifies: tau 0.80")
    assert study_lines(far["recommended"], 1000) == [
        "train_limit: 100", "recipe: {epochs: 1}    # keep your other recipe keys"]
    # A stricter bar that only the perfect ranking meets: the dearer budget.
    strict = summarise(_runs(ref, proxies, [m * 1e6 for m in _perm(N, 60)], seconds=seconds),
                       Calibration(epochs=(1,), train_images=(100, None), reference=REF,
                                   min_tau=0.9))
    assert strict["recommended"]["label"] == "1 ep x all"


def test_too_few_architectures_never_qualify():
    cal = Calibration(epochs=(1,), train_images=(100,), reference=REF)  # 8 needed by default
    six = ACC[:6]
    out = summarise(_runs({0: six, 1: six}, {(1, 100): six}, [6, 1, 4, 2, 5, 3]), cal)
    b = out["budgets"][0]
    assert b["tau"] == pytest.approx(1.0) and b["archs"] == 6 and not b["qualifies"]
    assert out["recommended"] is None and "6 architectures of the 8 needed" in out["reason"]
    # A constant proxy has no tau (NaN): never a recommendation, whatever else holds.
    flat = summarise(_runs({0: ACC, 1: ACC}, {(1, 100): [0.5] * N}, list(range(N))), cal)
    assert math.isnan(flat["budgets"][0]["tau"]) and not flat["budgets"][0]["qualifies"]
    assert flat["recommended"] is None


def test_no_recommendation_while_the_reference_does_not_rank_itself():
    cal = Calibration(epochs=(1,), train_images=(100,), reference=REF)
    seed1 = [ACC[i] for i in _perm(N, 30)]  # tau 0.5 with seed 0
    mean = [(a + b) / 2 for a, b in zip(ACC, seed1)]
    # A proxy equal to the reference's mean, MAdds at chance: the budget itself qualifies.
    out = summarise(_runs({0: ACC, 1: seed1}, {(1, 100): mean}, _perm(N, 60)), cal)
    assert out["reference_seed_tau"] == pytest.approx(stats.kendalltau(ACC, seed1)[0])
    assert out["reference_seed_tau"] == pytest.approx(0.5)
    assert out["budgets"][0]["qualifies"] and out["recommended"] is None
    assert "the reference does not rank itself across seeds (its seed tau is 0.50, below 0.7" \
        in out["reason"]
    # One reference seed: its agreement is unknown, and nothing is recommended either.
    one = summarise(_runs({0: ACC}, {(1, 100): ACC}, _perm(N, 60)), cal)
    assert one["recommended"] is None and "seed tau is unknown" in one["reason"]
    # A calibration stored before seeds were kept apart (every run at seed index 0).
    old = Calibration.from_dict({"epochs": [1], "train_images": [100], "reference": [3, None],
                                 "min_tau": 0.7, "archs": 16})
    shared = summarise(_runs({0: ACC}, {(1, 100): ACC}, _perm(N, 60), proxy_seed=0), old)
    assert shared["budgets"][0]["tau"] == pytest.approx(1.0) and shared["recommended"] is None
    assert "share seed index 0 with the reference" in shared["reason"]


@pytest.fixture
def write_study(write_study):
    """This module's calibration studies: the cheaper architectures (under 2.5M MAdds) on 500
    training images, a two-budget ladder and a reference of 300 images."""
    return defaults(write_study, "c", val_size=1500, holdout="test", budget_madds=2_500_000,
                    trials=2, workers=1, baselines={"families": ["width", "depth"], "points": 3},
                    calibration={"epochs": [1], "train_images": [100, 200],
                                 "reference": {"epochs": 1, "train_images": 300}, "archs": 4})


def test_calibrate_end_to_end_resumes_and_reports(tmp_path, capsys, write_study):
    path = write_study()
    assert main(["calibrate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(b["epochs"], b["train_images"]) for b in out["budgets"]] == [(1, 100), (1, 200)]
    assert set(out["budgets"][0]) >= {"epochs", "train_images", "tau", "p_value", "tau_ci95",
                                      "tau_madds", "tau_gain_ci95", "tau_params",
                                      "seconds_per_arch", "qualifies"}
    assert {"recommended", "reason", "reference_seed_tau"} <= set(out)
    assert out["recommended"] is None  # 4 architectures: never enough
    assert "4 architectures of the 8 needed" in out["reason"] or "seed tau" in out["reason"]
    # The stored runs, read back by hand: 4 architectures x (2 budgets + the reference at two
    # seed indices), the ladder at a seed index of its own, each trained as told.
    cfg = load_study_config(path)
    study = optuna.load_study(study_name="c.calibrate", storage=open_storage(cfg.storage))
    runs = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(runs) == 16 and len({t.user_attrs["arch_key"] for t in runs}) == 4
    for t in runs:
        assert t.user_attrs["epochs_run"] == t.user_attrs["epochs"]
        at_ref = t.user_attrs["train_images"] == 300
        assert t.user_attrs["seed"] in ((0, 1) if at_ref else (2,))
    ref: dict[str, list] = {}
    for t in runs:
        if t.user_attrs["train_images"] == 300:
            ref.setdefault(t.user_attrs["arch_key"], []).append(t.values[0])
    small = {t.user_attrs["arch_key"]: t.values[0] for t in runs
             if t.user_attrs["train_images"] == 100}
    keys = sorted(ref)
    assert all(len(ref[k]) == 2 for k in keys)
    tau = stats.kendalltau([small[k] for k in keys], [sum(ref[k]) / 2 for k in keys])[0]
    first = out["budgets"][0]["tau"]
    assert (first is None and math.isnan(tau)) or first == pytest.approx(tau)
    seed_tau = stats.kendalltau([ref[k][0] for k in keys], [ref[k][1] for k in keys])[0]
    got = out["reference_seed_tau"]
    assert (got is None and math.isnan(seed_tau)) or got == pytest.approx(seed_tau)
    madds = sorted({t.user_attrs["madds"] for t in runs})
    assert len(madds) == 4  # distinct architectures spread over MAdds
    assert whole(study.user_attrs, "calibration")["train_images"] == [100, 200]
    # Resume: nothing new to train, the same summary.
    assert main(["calibrate", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["budgets"] == out["budgets"]
    assert "0 runs newly queued, 0 to run" in captured.err
    # The text table names the span of the reference accuracies and the reason.
    assert main(["calibrate", str(path)]) == 0
    text = capsys.readouterr().out
    ref_out = out["reference"]
    assert f"accuracies {ref_out['acc_min']:.4f}-{ref_out['acc_max']:.4f}" in text
    assert out["reason"] in text and "95% interval" in text
    # The report shows the calibration figure and table once the search exists.
    assert main(["search", str(path)]) == 0
    html_out = tmp_path / "r.html"
    assert main(["report", str(path), "-o", str(html_out)]) == 0
    page = html_out.read_text()
    assert "id=calibration" in page and "1 ep x 200" in page and "τ − τ MAdds 95%" in page
    assert "fig-calibration" in page or all(b["tau"] is None for b in out["budgets"])
    # Two reference seeds: the reference's own agreement is measured.
    assert "The reference against itself" in page and out["reference"]["seed_pairs"] == 1


def test_a_new_users_npz_set_without_a_calibration_key_resolves_fractions(tmp_path, monkeypatch):
    """1,400 training images, 500 held for validation, no `calibration:`: the default ladder
    fits the 900 left (it once stopped on a 4000-image default the user never wrote)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "npz"
    folder.mkdir()
    for name, n in (("train", 1400), ("test", 100)):
        np.savez(folder / f"{name}.npz", images=rng.integers(0, 255, (n, 16, 16, 1), np.uint8),
                 labels=rng.integers(0, 4, n))
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({
        "name": "n", "space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "npz:npz",
        "val_size": 500, "holdout": "test", "trials": 2, "workers": 1}))
    ran = []
    monkeypatch.setattr(ladder_module, "run_workers", lambda cfg, *a, **k: ran.append(cfg.trials))
    cfg = load_study_config(path)
    summary = ladder_module.run_calibrate(cfg, print_fn=lambda s: None)
    assert summary["train_size"] == 900
    study = optuna.load_study(study_name="n.calibrate", storage=open_storage(cfg.storage))
    stored = whole(study.user_attrs, "calibration")
    assert stored["train_images"] == [112, 225, 450, None]  # 1/8, 1/4, 1/2 of 900, all
    waiting = [t.user_attrs for t in study.trials]
    assert ran == [len(waiting)] == [10 * (16 + 2)]  # 10 archs x (16 budgets + 2 reference seeds)
    assert {a["seed"] for a in waiting if a["epochs"] == 16} == {0, 1}
    assert {a["seed"] for a in waiting if a["epochs"] != 16} == {2}
    assert {a["train_images"] for a in waiting} == {112, 225, 450, None}
    assert summary["recommended"] is None and summary["reason"]


@pytest.mark.parametrize("cal, needle", [
    ("calibration: 3", "calibration: must be a mapping"),
    ("calibration: {epochs: []}", "calibration.epochs: must be a non-empty list"),
    ("calibration: {epochs: [0]}", "calibration.epochs: must be an integer >= 1"),
    ("calibration: {train_images: [many]}", "calibration.train_images: must be an integer"),
    ("calibration: {train_images: [1.5]}", "a fraction in (0, 1] of the training split"),
    ("calibration: {epochs: [20], reference: {epochs: 8}}", "exceeds the reference"),
    ("calibration: {train_images: [500], reference: {train_images: 100}}", "exceeds the reference"),
    ("calibration: {train_images: [0.5], reference: {train_images: 0.25}}", "exceeds the reference"),
    ("calibration: {min_tau: 1.5}", "calibration.min_tau: must be a number in (0, 1]"),
    ("calibration: {archs: 3}", "calibration.archs: must be an integer >= 4"),
    ("calibration: {min_archs: 2}", "calibration.min_archs: must be an integer >= 4"),
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


@pytest.mark.parametrize("cal, needle", [
    ({"train_images": [5000], "epochs": [1], "reference": {"epochs": 2}},  # no longer a default
     "calibration.train_images: 5000 exceeds the 500 training images"),
    ({"train_images": [100], "epochs": [1], "reference": {"epochs": 2, "train_images": 600}},
     "calibration.reference.train_images: 600 exceeds the 500 training images"),
    # A count against a fraction of the split: compared once the fraction is resolved.
    ({"train_images": [400], "epochs": [1], "reference": {"epochs": 2, "train_images": 0.5}},
     "is not all below the reference (2 ep x 250)"),
])
def test_counts_the_user_wrote_that_do_not_fit_are_errors_before_anything_is_stored(
        tmp_path, capsys, cal, needle, write_study):
    path = write_study(calibration=cal)
    assert main(["calibrate", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "c.journal").exists()


def test_too_few_archs_flag(tmp_path, capsys, write_study):
    assert main(["calibrate", str(write_study()), "--archs", "2"]) == 2
    assert "--archs: must be >= 4" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_calibrate_on_databases(tmp_path, capsys, kind, write_study):
    from tests.test_faults import _pg_url

    url = f"sqlite:///{tmp_path / 'c.db'}" if kind == "sqlite" else _pg_url()
    name = f"c{abs(hash(str(tmp_path))) % 10**8}"  # a fresh study on a shared server
    path = write_study(name=name, storage=url,
                  calibration={"epochs": [1], "train_images": [100],
                               "reference": {"epochs": 1, "train_images": 200}, "archs": 4})
    assert main(["calibrate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"]["archs"] == 4 and out["budgets"][0]["archs"] == 4
    study = optuna.load_study(study_name=f"{name}.calibrate", storage=open_storage(url))
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 12  # 4 x (1 + 2 seeds)
