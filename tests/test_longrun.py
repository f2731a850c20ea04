"""Proxy fidelity: architectures spread over MAdds and over accuracy ranks within MAdds (not only
front points), each scored by its mean over the study's runs, long runs on a fresh seed index
stored as they finish, tau with a bootstrap interval recomputed by hand, a verdict that compares
intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from scipy import stats

from condconv_nas.analysis.calibration import RESAMPLES, ci_text
from condconv_nas.analysis.pareto import front
from condconv_nas.analysis.results import load_results
from condconv_nas.cli import main
from condconv_nas.search.fidelity import fidelity_points, fresh_seed, spread_ranks, verdict
from condconv_nas.search.study import load_study_config, open_storage, run_baselines, run_search
from condconv_nas.store.attrs import whole
from tests.conftest import ROOT


def test_spread_ranks_span_madds_and_accuracy_within_madds():
    madds = [1, 2, 3, 4, 5, 6, 7, 8]
    acc = [0.50, 0.40, 0.45, 0.30, 0.70, 0.55, 0.65, 0.60]
    # k=4: two MAdds bins ({1..4}, {5..8}); in each, its worst and best accuracy.
    assert spread_ranks(madds, acc, 4) == [0, 3, 4, 5]
    # k=9 of 20: three bins of 7, 7, 6, three picks each at worst, middle and best rank.
    picks = spread_ranks(list(range(20)), [float((7 * i) % 20) for i in range(20)], 9)
    assert len(set(picks)) == 9
    assert [sum(1 for p in picks if lo <= p < hi) for lo, hi in ((0, 7), (7, 14), (14, 20))] == [3] * 3
    assert spread_ranks(madds, acc, 8) == list(range(8)) == spread_ranks(madds, acc, 20)
    assert spread_ranks(madds, acc, 1) == [5]  # one bin: its median accuracy rank
    # Not the front: along a front accuracy rises with MAdds, so a front's proxy order is its
    # MAdds order by construction; the spread takes dominated points too.
    df = pd.DataFrame({"madds": madds, "val_acc": acc})
    assert not set(spread_ranks(madds, acc, 4)) <= set(front(df).index)


def _identity(spec: str) -> str:
    return json.dumps({k: v for k, v in json.loads(spec).items() if k != "name"}, sort_keys=True)


def _row(family: str, number: int, seed: int, acc: float, depth: int, label: str = "") -> dict:
    spec = json.dumps({"name": f"n{number}", "depth": depth})  # the name is not the identity
    return {"family": family, "number": number, "seed": seed, "val_acc": acc, "spec": spec,
            "madds": 1000 * depth, "params": 10 * depth, "label": label}


def test_fidelity_points_score_each_architecture_by_its_mean_over_the_studys_runs():
    done = pd.DataFrame([
        _row("search", 0, 0, 0.50, 1), _row("search", 1, 0, 0.60, 2),
        _row("search", 2, 0, 0.60, 2),  # the same architecture and seed: the same run, once
        _row("random", 0, 0, 0.70, 3),
        _row("width", 10, 0, 0.40, 4, "width x1"), _row("width", 11, 1, 0.44, 4, "width x1"),
        _row("depth", 12, 1, 0.45, 1, "depth x1"),  # search trial 0's architecture, seed 1
        _row("depth", 13, 0, 0.80, 5, "depth x2")])
    confirmed = pd.DataFrame([_row("search", 20, 1, 0.66, 2), _row("search", 21, 2, 0.72, 2)])
    points = fidelity_points(done, 3, confirmed)
    by = {p["madds"] // 1000: p for p in points}
    assert sorted(by) == [1, 2, 3, 4, 5]  # each architecture once
    assert by[1]["source"] == "search" and by[1]["proxy_acc"] == pytest.approx((0.50 + 0.45) / 2)
    assert by[2]["proxy_acc"] == pytest.approx((0.60 + 0.66 + 0.72) / 3) and by[2]["proxy_runs"] == 3
    assert by[4]["proxy_acc"] == pytest.approx(0.42) and by[4]["name"] == "width x1"
    assert (by[3]["source"], by[3]["name"]) == ("random", "trial 0")
    assert fresh_seed(done, confirmed) == 3


def test_the_fidelity_seed_index_stays_put_while_confirmation_runs_land_beside_it():
    search = pd.DataFrame([_row("search", 0, 0, 0.5, 1), _row("width", 10, 1, 0.4, 2)])
    confirmed = pd.DataFrame([_row("search", 20, 1, 0.6, 1)])
    # Confirmation plans seed indices 1 and 2; one of its runs is stored when the check starts.
    first = fresh_seed(search, confirmed, planned=2)
    assert first == 3
    landed = pd.concat([confirmed, pd.DataFrame([_row("search", 21, 2, 0.7, 1)])])
    assert fresh_seed(search, landed, planned=2) == first  # its checkpoints stay usable
    # A restart keeps the index it chose, unless a run has used it since (confirm --seeds 3).
    assert fresh_seed(search, landed, planned=2, chosen=first) == first
    assert fresh_seed(search, landed, planned=2, chosen=7) == 7
    used = pd.concat([landed, pd.DataFrame([_row("search", 22, 3, 0.7, 1)])])
    assert fresh_seed(used, planned=2, chosen=first) == 4
    assert fresh_seed(search, landed, planned=2, chosen=2) == 3  # the config plans index 2


def _agreement(tau: float, ci: list, tau_madds: float, madds_ci: list, gain: list) -> dict:
    return {"archs": 8, "tau": tau, "tau_ci95": ci, "tau_madds": tau_madds,
            "tau_madds_ci95": madds_ci, "tau_gain_ci95": gain}


def test_verdict_compares_intervals():
    assert "NOT" in verdict(_agreement(0.3, [-0.1, 0.6], 0.1, [-0.3, 0.5], [-0.2, 0.6]))
    better = verdict(_agreement(0.8, [0.6, 0.95], 0.1, [-0.3, 0.5], [0.2, 1.1]))
    assert better.startswith("The proxy ranks the architectures better than MAdds alone")
    # A higher tau than MAdds', but the paired interval of the difference spans zero.
    spans = verdict(_agreement(0.8, [0.6, 0.95], 0.6, [0.3, 0.9], [-0.1, 0.4]))
    assert "not demonstrably better than MAdds alone" in spans and "[-0.10, 0.40]" in spans
    assert "worse than MAdds" in verdict(_agreement(0.4, [0.1, 0.7], 0.9, [0.8, 1.0], [-0.8, -0.1]))
    assert "Too few" in verdict({**_agreement(1.0, [1, 1], 0, [0, 0], [1, 1]), "archs": 3})
    assert "Too few" in verdict(_agreement(math.nan, [0, 0], 0, [0, 0], [0, 0]))


def test_fidelity_end_to_end(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "synthetic",
        "holdout": "test", "budget_madds": 2_500_000,  # the cheaper architectures: quick runs
        "val_size": 1500, "train_limit": 300,  # long runs on the 500 training images
        "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "trials": 5, "seed": 0,
        "baselines": {"families": ["width"], "points": 2, "seeds": 2}}))
    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda s: None)
    run_baselines(cfg, print_fn=lambda s: None)
    assert main(["fidelity", str(path), "--top", "2", "--epochs", "2", "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    # Progress: a line per epoch of each long run, the last one with the stored accuracy.
    for q in record["points"]:
        assert f"  {q['name']}: epoch 1/2, val " in captured.err
        assert f"  {q['name']}: epoch 2/2, val {q['long_acc']:.4f} (" in captured.err
    sources = [p["source"] for p in record["points"]]
    assert sources.count("width") == 2 and 1 <= sources.count("search") <= 2
    # A fresh seed index: the baselines used 0 and 1, and confirmation (3 seeds by default, not
    # run yet) will use 1 to 3.
    assert record["seed"] == 4 and "at fresh seed index 4" in captured.out
    # Each proxy accuracy is the mean over the stored runs of that architecture (both seeds of a
    # baseline point), recounted from the stored trials.
    results = load_results(open_storage(cfg.storage), "t")
    done = results.finished
    chosen = fidelity_points(done, 2, results.confirmed)
    identity = done.spec.map(_identity)
    for p, q in zip(chosen, record["points"]):
        same = done[identity == _identity(p["spec"])].drop_duplicates("seed")
        assert q["proxy_acc"] == pytest.approx(same.val_acc.mean())
        assert q["proxy_runs"] == len(same)
    assert {q["proxy_runs"] for q in record["points"] if q["source"] == "width"} == {2}
    # The stored tau and its one-sided p are scipy's on the stored pairs; the interval is the
    # percentile interval of scipy's tau over the same architecture resamples.
    proxy = [q["proxy_acc"] for q in record["points"]]
    long = [q["long_acc"] for q in record["points"]]
    greater = stats.kendalltau(proxy, long, alternative="greater")
    assert record["n"] == len(record["points"]) and record["epochs"] == 2
    if math.isnan(greater.statistic):  # a constant ranking (possible on easy synthetic data)
        assert record["tau"] is None and record["p_value"] is None
    else:
        assert record["tau"] == pytest.approx(greater.statistic)
        assert record["p_value"] == pytest.approx(greater.pvalue)
    n = len(long)
    idx = np.random.default_rng(0).integers(0, n, (RESAMPLES, n))
    taus = np.nan_to_num([stats.kendalltau(np.array(proxy)[i], np.array(long)[i])[0] for i in idx])
    assert record["tau_ci95"] == pytest.approx(list(np.percentile(taus, [2.5, 97.5])))
    assert {"tau_madds", "tau_madds_ci95", "tau_gain_ci95", "tau_params"} <= set(record)
    madds_tau = stats.kendalltau([q["madds"] for q in record["points"]], long)[0]
    assert record["tau_madds"] == pytest.approx(madds_tau) or (
        math.isnan(madds_tau) and record["tau_madds"] is None)
    # Each architecture once: the base network anchoring several families is not retrained twice.
    specs = [_identity(q["spec"]) for q in chosen]
    assert len(specs) == len(set(specs)) == record["n"]
    study = optuna.load_study(study_name="t", storage=open_storage(cfg.storage))
    assert whole(study.user_attrs, "fidelity")["n"] == record["n"]
    runs = whole(study.user_attrs, "fidelity_runs")
    assert len(runs) == record["n"] and {r["seed"] for r in runs.values()} == {4}
    # Each long run saved its epochs and removed its checkpoint when it finished.
    folder = Path(cfg.artifacts) / "checkpoints"
    assert folder.is_dir() and not list(folder.iterdir())
    # A second run retrains nothing: every long run is stored.
    assert main(["fidelity", str(path), "--top", "2", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert f"({record['n']} already done)" in out and ci_text(record["tau_ci95"]) in out
    # The report shows it.
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Proxy fidelity" in page and "Kendall" in page


@pytest.mark.slow  # worker processes start torch: 1.5 min of the default run's 10
def test_fidelity_runs_in_the_study_workers_as_a_single_process_would(tmp_path, capsys, monkeypatch):
    from condconv_nas.nn.spec import ArchSpec
    from condconv_nas.search import fidelity as longrun
    from condconv_nas.search.fidelity import _key, retrain

    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({
        "name": "w", "space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "synthetic",
        "holdout": "test", "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "trials": 3,
        "seed": 0, "train_limit": 400, "workers": 2,
        "baselines": {"families": ["width"], "points": 2, "seeds": 1}}))
    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda s: None)
    run_baselines(cfg, print_fn=lambda s: None)
    monkeypatch.setattr(longrun.os, "sched_getaffinity", lambda pid: {0, 1})  # 1 thread a worker
    assert main(["fidelity", str(path), "--top", "1", "--epochs", "2", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    record = json.loads(out[-1])
    assert record["n"] == 2 and sum(line.startswith("  trained ") for line in out) == 2
    # Each stored long run equals the same run trained here, in this process, on one thread,
    # at the same fresh seed index.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = whole(optuna.load_study(study_name="w", storage=open_storage(cfg.storage)
                                   ).user_attrs, "fidelity_runs")
    results = load_results(open_storage(cfg.storage), "w")
    for p in fidelity_points(results.finished, 1, results.confirmed):
        _, result, _ = retrain(cfg, ArchSpec.from_dict(json.loads(p["spec"])), 2, "cpu",
                               seed=record["seed"])
        assert runs[_key(p, 2, record["seed"])]["val_acc"] == result.val_acc
