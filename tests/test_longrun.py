"""Proxy fidelity: points spread over the fronts, long runs stored as they finish, tau reported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from condconv_nas.cli import main
from condconv_nas.longrun import _spread, fidelity_points, verdict
from condconv_nas.pareto import kendall_tau
from condconv_nas.results import load_results
from condconv_nas.study import load_study_config, open_storage, run_baselines, run_search

ROOT = Path(__file__).parent.parent


def test_spread_picks_ends_and_middle():
    df = pd.DataFrame({"madds": [5, 1, 3, 2, 4], "val_acc": [0.5] * 5})
    assert list(_spread(df, 3).madds) == [1, 3, 5]
    assert list(_spread(df, 9).madds) == [1, 2, 3, 4, 5]
    assert list(_spread(df, 1).madds) == [5]


def test_verdict_says_when_the_proxy_is_not_evidence():
    assert "NOT" in verdict(0.1, 0.6, 8)
    assert "no better than counting MAdds" in verdict(0.8, 0.01, 8, tau_madds=0.9)
    assert "is evidence" in verdict(0.8, 0.01, 8)
    assert "Too few" in verdict(1.0, 0.1, 3)


def test_fidelity_end_to_end(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "synthetic",
        "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "trials": 5, "seed": 0,
        "train_limit": 600, "baselines": {"families": ["width"], "points": 2, "seeds": 1}}))
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
    # The stored tau is the tau of the stored pairs (an independent recount).
    tau, p = kendall_tau([q["proxy_acc"] for q in record["points"]],
                         [q["long_acc"] for q in record["points"]])
    assert record["n"] == len(record["points"]) and record["epochs"] == 2
    # nan when one ranking is constant (possible on easy synthetic data): then both are nan.
    assert record["tau"] == tau or (math.isnan(tau) and math.isnan(record["tau"]))
    assert record["p_value"] == p or (math.isnan(p) and math.isnan(record["p_value"]))
    # Each architecture once: the base network anchoring several families is not retrained twice.
    specs = [json.dumps({k: v for k, v in json.loads(q["spec"]).items() if k != "name"},
                        sort_keys=True) for q in fidelity_points(
        load_results(open_storage(cfg.storage), "t").finished, 2)]
    assert len(specs) == len(set(specs)) == record["n"]
    # Beside it, what MAdds and params alone reach on the same architectures.
    long = [q["long_acc"] for q in record["points"]]
    madds_tau = kendall_tau([q["madds"] for q in record["points"]], long)[0]
    assert record["tau_madds"] == madds_tau or (math.isnan(madds_tau)
                                                and math.isnan(record["tau_madds"]))
    assert "tau_params" in record
    study = optuna.load_study(study_name="t", storage=open_storage(cfg.storage))
    assert study.user_attrs["fidelity"]["n"] == record["n"]
    assert len(study.user_attrs["fidelity_runs"]) == record["n"]
    # Each long run saved its epochs and removed its checkpoint when it finished.
    folder = Path(cfg.artifacts) / "checkpoints"
    assert folder.is_dir() and not list(folder.iterdir())
    # A second run retrains nothing: every long run is stored.
    assert main(["fidelity", str(path), "--top", "2", "--epochs", "2"]) == 0
    assert f"({record['n']} already done)" in capsys.readouterr().out
    # The report shows it.
    assert main(["report", str(path), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Proxy fidelity" in page and "Kendall" in page


@pytest.mark.slow  # worker processes start torch: 1.5 min of the default run's 10
def test_fidelity_runs_in_the_study_workers_as_a_single_process_would(tmp_path, capsys,
                                                                        monkeypatch):
    from condconv_nas import longrun
    from condconv_nas.longrun import _key, retrain
    from condconv_nas.spec import ArchSpec

    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({
        "name": "w", "space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "synthetic",
        "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "trials": 3, "seed": 0,
        "train_limit": 400, "workers": 2,
        "baselines": {"families": ["width"], "points": 2, "seeds": 1}}))
    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda s: None)
    run_baselines(cfg, print_fn=lambda s: None)
    monkeypatch.setattr(longrun.os, "sched_getaffinity", lambda pid: {0, 1})  # 1 thread a worker
    assert main(["fidelity", str(path), "--top", "1", "--epochs", "2", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    record = json.loads(out[-1])
    assert record["n"] == 2 and sum(line.startswith("  trained ") for line in out) == 2
    # Each stored long run equals the same run trained here, in this process, on one thread.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = optuna.load_study(study_name="w", storage=open_storage(cfg.storage)
                             ).user_attrs["fidelity_runs"]
    points = fidelity_points(load_results(open_storage(cfg.storage), "w").finished, 1)
    for p in points:
        _, result, _ = retrain(cfg, ArchSpec.from_dict(json.loads(p["spec"])), 2, "cpu")
        assert runs[_key(p, 2)]["val_acc"] == result.val_acc
