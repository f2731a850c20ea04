"""Export: picks, arch.json round trip (params, MAdds, keys, outputs), TorchScript, ONNX, retrain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

import condconv_nas as cn
from condconv_nas.cli import main
from condconv_nas.export import ExportError, knee_index, parse_pick
from condconv_nas.nn.spec import ArchSpec, SpecError
from condconv_nas.search.study import load_study_config, open_storage, run_search
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A finished tiny search on synthetic data (front trials keep their weights)."""
    tmp = tmp_path_factory.mktemp("search")
    path = tmp / "t.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "synthetic",
        "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "trials": 4, "seed": 0}))
    run_search(load_study_config(path), print_fn=lambda s: None)
    return path


def test_parse_pick():
    assert str(parse_pick("best")) == "best" and str(parse_pick("knee")) == "knee"
    assert parse_pick("budget=30M").value == 30_000_000 and parse_pick("trial=7").value == 7
    for bad in ("worst", "budget=-3", "budget=abc", "trial=x", ""):
        with pytest.raises(ExportError, match="--pick"):
            parse_pick(bad)


def test_knee_is_the_point_farthest_above_the_chord():
    # On log10 MAdds 0..2 and accuracy 0.5..0.95 scaled to [0, 1], the middle point (0.5, 0.89)
    # lies farthest above the chord from (0, 0) to (1, 1).
    f = pd.DataFrame({"madds": [1, 10, 100], "val_acc": [0.5, 0.9, 0.95]})
    assert knee_index(f) == 1
    f = pd.DataFrame({"madds": [1, 10, 100], "val_acc": [0.5, 0.55, 0.95]})
    assert knee_index(f) in (0, 2)  # below the chord: an end point
    assert knee_index(f.iloc[:2]) == 0


def test_export_round_trip(searched, tmp_path, capsys):
    out = tmp_path / "best"
    assert main(["export", str(searched), "--pick", "best", "-o", str(out), "--onnx"]) == 0
    for name in ("arch.json", "weights.pt", "model.ts", "model.onnx", "MODEL_CARD.md"):
        assert (out / name).exists(), name
    record = json.loads((out / "arch.json").read_text())
    assert record["format"] == "condconv-nas/arch" and record["version"] == 1
    cfg = load_study_config(searched)
    study = optuna.load_study(study_name="t", storage=open_storage(cfg.storage))
    best = max((t for t in study.trials if t.values and not t.user_attrs.get("infeasible")),
               key=lambda t: (t.values[0], -t.values[1]))
    assert record["provenance"]["trial"] in {best.number, best.user_attrs.get("reused_from")}
    spec = ArchSpec.from_dict(record["spec"])
    assert record["preprocess"]["input_size"] == spec.input_size  # what the network takes
    model = cn.load_arch(out)
    cost = cn.count_cost(spec)
    # Same params and MAdds as the stored trial, counted independently from the spec.
    assert record["metrics"]["madds"] == cost.madds == best.values[1]
    assert sum(p.numel() for p in model.parameters()) == cost.params == best.user_attrs["params"]
    # Same state-dict keys as a fresh build, and the weights are the trial's artifact.
    fresh = cn.build_model(spec)
    assert list(model.state_dict()) == list(fresh.state_dict())
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    artifact_trial = study.trials[record["provenance"]["trial"]]
    download_artifact(artifact_store=FileSystemArtifactStore(cfg.artifacts),
                      file_path=str(tmp_path / "w.pt"),
                      artifact_id=artifact_trial.user_attrs["weights_artifact"])
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    fresh.eval()
    x = torch.randn(3, spec.in_channels, spec.input_size, spec.input_size)
    with torch.no_grad():
        ref = fresh(x)
        assert torch.allclose(model(x), ref, atol=1e-5)
        # TorchScript traced at batch 2 serves batch 3 and 1.
        ts = torch.jit.load(str(out / "model.ts"))
        assert torch.allclose(ts(x), ref, atol=1e-5)
        assert torch.allclose(ts(x[:1]), ref[:1], atol=1e-5)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(onnx_out - ref.numpy()).max() < 1e-4
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{cost.madds:,}" in card and "load_arch" in card
    # The exported file was timed beside its static twin (sanity only, never a speed).
    lat = record["metrics"]["latency"]
    assert lat["file"] == "model.ts" and lat["batch"] == 1 and lat["threads"] >= 1
    assert lat["model_ms"] > 0 and lat["static_twin_ms"] > 0
    assert lat["ratio"] == pytest.approx(lat["model_ms"] / lat["static_twin_ms"], abs=2e-3)
    if not any(b.condconv for b in spec.blocks()):
        assert lat["ratio"] == 1
    assert f"{lat['model_ms']:.2f} ms" in card


def test_reused_trial_exports_the_weights_of_the_trial_it_reused():
    from condconv_nas.analysis.results import StudyResults
    from condconv_nas.export import _weights_of

    t = pd.DataFrame({"family": "search", "number": [3, 7], "reused_from": [float("nan"), 3.0],
                      "weights_artifact": ["art-3", ""]})
    res = StudyResults(name="s", storage="", trials=t)
    assert _weights_of(res, t.iloc[1]) == "art-3" and _weights_of(res, t.iloc[0]) == "art-3"


def test_export_bad_input(searched, tmp_path, capsys):
    assert main(["export", str(searched), "--pick", "budget=10", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no completed trial" in err[0] and "<= 10 MAdds" in err[0]
    assert not (tmp_path / "x").exists()
    assert main(["export", str(searched), "--pick", "trial=99"]) == 2
    assert "no trial 99" in capsys.readouterr().err
    empty = tmp_path / "e.yaml"
    empty.write_text(searched.read_text().replace("name: t", "name: e"))
    run = optuna.create_study(study_name="e", storage=open_storage(str(tmp_path / "e.journal")))
    assert run is not None
    assert main(["export", str(empty)]) == 2
    assert "no completed trials" in capsys.readouterr().err


@pytest.mark.parametrize("change, needle", [
    ({"format": "other/thing"}, "is not condconv-nas/arch"),
    ({"version": 2}, "version 2 is not supported"),
    ({"version": "1"}, "version '1' is not supported"),
])
def test_arch_json_of_another_format_or_version(searched, tmp_path, capsys, change, needle):
    out = tmp_path / "e"
    assert main(["export", str(searched), "-o", str(out)]) == 0
    record = json.loads((out / "arch.json").read_text())
    record.update(change)
    (out / "arch.json").write_text(json.dumps(record))
    with pytest.raises(SpecError, match=needle):
        cn.load_arch(out)
    capsys.readouterr()
    assert main(["cost", "--arch", str(out / "arch.json")]) == 2
    assert needle in capsys.readouterr().err


def test_export_with_retrain_then_train_the_arch(searched, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["export", str(searched), "-o", str(out), "--retrain", "2", "--no-progress"]) == 0
    record = json.loads((out / "arch.json").read_text())
    retrained = record["metrics"]["retrained"]
    assert retrained["epochs"] == 2 and 0 <= retrained["test_acc"] <= 1
    assert record["weights"]["source"] == "retrained 2 epochs"
    assert (out / "proxy_weights.pt").exists()
    assert "retrained test accuracy" in (out / "MODEL_CARD.md").read_text()
    model = cn.load_arch(out / "arch.json")
    assert not model.training
    capsys.readouterr()
    assert main(["train", "--arch", str(out / "arch.json"), "--dataset", "synthetic", "--epochs",
                 "1", "--eval-test", "--json", "--no-progress"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["madds"] == record["metrics"]["madds"] and figures["test_acc"] is not None


def test_load_arch_without_weights(searched, tmp_path):
    out = tmp_path / "n"
    assert main(["export", str(searched), "-o", str(out)]) == 0
    (out / "weights.pt").unlink()
    with pytest.raises(ExportError, match="no weights"):
        cn.load_arch(out)
    assert isinstance(cn.load_arch(out, weights=False), torch.nn.Module)


def test_export_refuses_a_trial_without_weights_unless_asked(searched, tmp_path, capsys):
    from condconv_nas.store.record import record_attrs

    # A study holding one finished trial whose weights were not kept (it was off the front).
    spec = next(t for t in optuna.load_study(
        study_name="t", storage=open_storage(load_study_config(searched).storage)).trials
        if t.values and t.values[0] > 0).user_attrs["spec"]
    path = tmp_path / "b.yaml"
    path.write_text(searched.read_text().replace("name: t", "name: b"))
    study = optuna.create_study(study_name="b", storage=open_storage(str(tmp_path / "b.journal")),
                                directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1e6], user_attrs=record_attrs(
        spec=spec, madds=1_000_000, params=1)))
    out = tmp_path / "bare"
    assert main(["export", str(path), "--pick", "trial=0", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--retrain" in err[0] and not out.exists(), err
    assert main(["export", str(path), "--pick", "trial=0", "-o", str(out), "--untrained"]) == 0
    assert json.loads((out / "arch.json").read_text())["weights"] is None


def test_exported_weights_reproduce_the_trials_validation_accuracy(searched, tmp_path):
    from condconv_nas.analysis.results import load_results
    from condconv_nas.search.config import load_study_data
    from condconv_nas.train.train import evaluate

    cfg = load_study_config(searched)
    out = tmp_path / "best"
    assert main(["export", str(searched), "-o", str(out)]) == 0
    record = json.loads((out / "arch.json").read_text())
    trial = record["provenance"]["trial"]
    res = load_results(open_storage(cfg.storage), "t")
    stored = float(res.trials[res.trials.number == trial].val_acc.iloc[0])
    data = load_study_data(cfg)  # the study's own validation split, as the trial was scored
    acc = evaluate(cn.load_arch(out), data.val, data, channels_last=cfg.recipe.channels_last)
    assert acc == pytest.approx(stored, abs=1.5 / len(data.val))  # at most one image apart


def _results_with_confirmations(holdout: bool = True):
    """Three search front points: #2 has the best single run, #1 the best confirmed validation
    mean, #0 the best holdout mean (which the pick must not look at)."""
    from condconv_nas.analysis.results import COLUMNS, StudyResults

    def frame(rows):
        return pd.DataFrame([{**{c: None for c in COLUMNS}, "state": "COMPLETE", "feasible": True,
                              "rung": 0, **r} for r in rows], columns=COLUMNS)

    trials = frame([{"family": "search", "number": n, "val_acc": a, "madds": m, "seed": 0}
                    for n, a, m in ((0, 0.80, 1e6), (1, 0.84, 2e6), (2, 0.86, 3e6))])
    runs = []
    for n, accs, held in ((0, (0.79, 0.80), (0.90, 0.91)), (1, (0.85, 0.84), (0.83, 0.82)),
                          (2, (0.81, 0.80), (0.80, 0.80))):
        for s, (a, h) in enumerate(zip(accs, held), start=1):
            runs.append({"family": "search", "number": 10 + 2 * n + s, "confirm_of": n,
                         "val_acc": a, "holdout_acc": h if holdout else None, "seed": s,
                         "madds": 1e6 * (n + 1)})
    for df in (trials, conf := frame(runs)):
        for col in ("val_acc", "holdout_acc", "madds", "confirm_of"):
            df[col] = pd.to_numeric(df[col])
    return StudyResults(name="s", storage="", trials=trials, confirmations=conf)


def test_pick_best_takes_the_best_confirmed_mean_not_the_best_single_run():
    from condconv_nas.export import confirmed_summary, pick_trial

    res = _results_with_confirmations()
    # Picked by the confirmations' validation means (0.795, 0.845, 0.805); the holdout means,
    # which the card reports as untouched by the pick, played no part (#0 is best there).
    assert int(pick_trial(res, parse_pick("best")).number) == 1
    summary = confirmed_summary(res, 1)
    assert summary == {"mean": pytest.approx(0.825), "std": pytest.approx(0.00707, abs=1e-5),
                       "seeds": 2, "split": "holdout"}
    # A study confirmed before holdout splits: the confirmed mean is on validation, said so.
    old = _results_with_confirmations(holdout=False)
    assert int(pick_trial(old, parse_pick("best")).number) == 1
    assert confirmed_summary(old, 1) == {"mean": pytest.approx(0.845), "seeds": 2,
                                         "std": pytest.approx(0.00707, abs=1e-5),
                                         "split": "validation"}
