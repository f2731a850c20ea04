"""Latency in studies: the `measure` and `objectives` keys, isolation between workers, storage."""

from __future__ import annotations

import json
import math
import threading
import time

import optuna
import pandas as pd
import pytest
import yaml

from condconv_nas.analysis.claims import study_headline
from condconv_nas.analysis.headline import axes_agree
from condconv_nas.analysis.pareto import front, latency_axis
from condconv_nas.analysis.results import load_results
from condconv_nas.cli import main
from condconv_nas.search.config import StudyError, load_study_config
from condconv_nas.search.study import run_baselines, run_confirm, run_search
from condconv_nas.store.record import TrialRecord
from condconv_nas.store.storage import open_storage
from condconv_nas.train.isolation import Isolation
from tests.conftest import defaults

MEASURE = {"device": "cpu", "batch": 1, "threads": 1, "repeats": 1}


@pytest.fixture
def write_study(write_study):
    """This module's studies: 3 trials on 300 images, one-seed width baselines."""
    return defaults(write_study, "m", train_limit=300, val_size=200, trials=3,
                    baselines={"families": ["width"], "points": 2, "seeds": 1})


@pytest.mark.parametrize("measure, objectives, needle", [
    ({"device": "tpu"}, None, "measure.device: must be cpu or cuda"),
    ({"batch": 0}, None, "measure.batch: must be an integer >= 1"),
    ({"threads": "two"}, None, "measure.threads: must be an integer >= 1"),
    ({"repeat": 3}, None, "measure: must be a mapping with keys"),
    ("cpu", None, "measure: must be a mapping"),
    (None, ["accuracy", "latency"], "objectives: latency needs a measure key"),
    (MEASURE, ["accuracy", "flops"], "objectives: must be [accuracy, madds] or [accuracy, latency]"),
    (MEASURE, "latency", "objectives: must be"),
])
def test_bad_measure_and_objectives_settings(tmp_path, capsys, measure, objectives, needle, write_study):
    extra = {k: v for k, v in (("measure", measure), ("objectives", objectives)) if v is not None}
    path = write_study(**extra)
    with pytest.raises(StudyError, match="m.yaml: " + needle.replace("[", r"\[").replace("]", r"\]")):
        load_study_config(path)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_measuring_on_a_gpu_that_is_not_there_is_one_error(tmp_path, capsys, write_study):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    path = write_study(measure={**MEASURE, "device": "cuda"}, workers=1)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU is visible" in err and len(err.splitlines()) == 1


def test_measurement_waits_for_steps_in_flight_and_holds_new_ones(tmp_path):
    trainer, measurer = Isolation(tmp_path), Isolation(tmp_path)  # two open files: two "processes"
    steps: list[tuple[float, float]] = []
    stop = threading.Event()

    def train():
        while not stop.is_set():
            with trainer.step():
                start = time.monotonic()
                time.sleep(0.01)
                steps.append((start, time.monotonic()))

    thread = threading.Thread(target=train)
    thread.start()
    time.sleep(0.05)
    with measurer.exclusive(timeout=5) as isolated:
        held = (time.monotonic(), None)
        time.sleep(0.1)
        held = (held[0], time.monotonic())
    time.sleep(0.05)
    stop.set()
    thread.join()
    assert isolated
    assert not [s for s in steps if s[0] < held[1] and s[1] > held[0]]  # no step overlapped
    assert any(s[1] <= held[0] for s in steps) and any(s[0] >= held[1] for s in steps)


def test_measurement_that_cannot_get_the_machine_says_so(tmp_path):
    trainer, measurer = Isolation(tmp_path), Isolation(tmp_path)
    with trainer.step():  # a step that outlasts the measurer's patience
        start = time.monotonic()
        with measurer.exclusive(timeout=0.1) as isolated:
            assert not isolated
        assert time.monotonic() - start >= 0.1
    with measurer.exclusive(timeout=0.1) as isolated:
        assert isolated


def test_every_trained_architecture_gets_a_latency(tmp_path, monkeypatch, write_study):
    monkeypatch.setenv("CONDCONV_NAS_LOCK_DIR", str(tmp_path / "locks"))
    path = write_study(measure=MEASURE)
    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda s: None)
    run_baselines(cfg, print_fn=lambda s: None)
    results = load_results(open_storage(cfg.storage), cfg.name)
    trained = results.trials[(results.trials.state == "COMPLETE") & results.trials.feasible]
    assert set(trained.family) == {"search", "width"}
    assert (trained.latency_ms > 0).all() and (trained.latency_ms_p90 >= trained.latency_ms).all()
    assert trained.latency_isolated.all()
    study = optuna.load_study(study_name="m", storage=open_storage(cfg.storage))
    for t in study.trials:
        r = TrialRecord.of(t.user_attrs)
        if r.latency_ms is not None:
            # The objective stays MAdds unless asked (a skipped repeat: the values it stands for).
            assert (t.values or r.known_values)[1] == r.madds
            assert "batch 1" in r.latency_device and "1 thread" in r.latency_device


def test_latency_objective_searches_on_measured_ms_and_keeps_the_budget(tmp_path, monkeypatch, write_study):
    monkeypatch.setenv("CONDCONV_NAS_LOCK_DIR", str(tmp_path / "locks"))
    path = write_study(measure=MEASURE, objectives=["accuracy", "latency"],
                       budget_madds="5.5M")
    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda s: None)
    study = optuna.load_study(study_name="m", storage=open_storage(cfg.storage))
    seen = 0
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        r = TrialRecord.of(t.user_attrs)
        if r.infeasible:
            assert r.madds > 5_500_000 and t.values[1] == float("inf")
        else:
            assert t.values[1] == r.latency_ms and r.madds <= 5_500_000
            seen += 1
    assert seen >= 1
    # Front weights are kept by the searched objective: each kept one is on the (acc, ms) front.
    trained = [t for t in study.trials if t.state.name == "COMPLETE"
               and not TrialRecord.of(t.user_attrs).infeasible]
    for t in trained:
        if TrialRecord.of(t.user_attrs).weights_artifact:
            assert not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1]
                           and o.values != t.values and o.number < t.number for o in trained)
    # Resuming the study as a MAdds study would mix objectives: refused.
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "objectives":
                                    ["accuracy", "madds"]}))
    with pytest.raises(Exception, match="objective"):
        run_search(load_study_config(path), print_fn=lambda s: None)


def _frames():
    """Width baselines whose ms follow MAdds, and a confirmed search point that is cheap in MAdds
    (2M, where the baseline reaches 0.85) but slow (4 ms, where the baseline reaches 0.90)."""
    rows, number = [], 0
    for mult, madds, ms, acc in ((0.5, 1e6, 1.0, 0.80), (1.0, 2e6, 2.0, 0.85), (2.0, 4e6, 4.0, 0.90)):
        for seed, noise in enumerate((-0.002, 0.0, 0.002)):
            rows.append({"family": "width", "number": number, "val_acc": acc + noise,
                         "madds": madds, "multiplier": mult, "seed": seed, "arch_key": f"w{mult}",
                         "latency_ms": ms + 0.01 * seed, "confirm_of": None})
            number += 1
    rows.append({"family": "search", "number": 100, "val_acc": 0.885, "madds": 2e6,
                 "multiplier": None, "seed": 0, "arch_key": "s", "latency_ms": 4.0,
                 "confirm_of": None})
    finished = pd.DataFrame(rows)
    confirmed = pd.DataFrame([{"family": "search", "number": 200 + i, "val_acc": 0.88 + d,
                               "madds": 2e6, "multiplier": None, "seed": i + 1, "arch_key": "s",
                               "latency_ms": 4.0 + 0.02 * i, "confirm_of": 100}
                              for i, d in enumerate((-0.002, 0.0, 0.002))])
    return finished, confirmed


def test_latency_axis_takes_each_architectures_median_and_keeps_the_count():
    finished, _ = _frames()
    timed = latency_axis(finished)
    assert list(timed.madds_count) == list(finished.madds)
    assert set(timed[timed.arch_key == "w1.0"].madds) == {2.01}  # median of 2.00, 2.01, 2.02
    assert latency_axis(finished.assign(latency_ms=math.nan)).empty


def _claim_frames():
    """Three confirmed search points that are cheap in MAdds but slow: each beats its width
    control at matched MAdds (0.88 against 0.85, 2 ms) and loses to the width control that
    matches its latency (0.90, twice the MAdds)."""
    finished, confirmed = [], []
    for mult, madds, ms in ((0.25, 1e6, 1.0), (4.0, 1e7, 20.0)):  # the family's range
        finished.append({"family": "width", "number": len(finished), "val_acc": 0.8,
                         "holdout_acc": 0.8, "madds": madds, "multiplier": mult, "seed": 0,
                         "arch_key": f"g{mult}", "latency_ms": ms, "confirm_of": None})
    for i, m in enumerate((2e6, 2.5e6, 3.1e6)):
        ms = 4.0 + i
        finished.append({"family": "search", "number": 100 + i, "val_acc": 0.9 + 0.01 * i,
                         "holdout_acc": None,
                         "madds": m, "multiplier": None, "seed": 0, "arch_key": f"s{i}",
                         "latency_ms": ms, "confirm_of": None})
        for s, noise in ((1, -0.002), (2, 0.0), (3, 0.002 + 0.001 * i)):
            common = {"number": 0, "val_acc": 0.9, "seed": s}
            confirmed += [
                {**common, "family": "search", "holdout_acc": 0.88 + noise, "madds": m,
                 "multiplier": None, "arch_key": f"s{i}", "latency_ms": ms, "confirm_of": 100 + i},
                {**common, "family": "width", "holdout_acc": 0.85 + noise, "madds": m * 1.01,
                 "multiplier": 1.0 + i, "arch_key": f"a{i}", "latency_ms": ms / 2,
                 "confirm_of": None},
                {**common, "family": "width", "holdout_acc": 0.90 + noise, "madds": 2 * m,
                 "multiplier": 2.0 + i, "arch_key": f"b{i}", "latency_ms": ms * 1.005,
                 "confirm_of": None}]
    return pd.DataFrame(finished), pd.DataFrame(confirmed)


def test_a_gain_at_matched_madds_can_be_a_loss_at_matched_latency():
    finished, confirmed = _claim_frames()
    head = study_headline(finished, confirmed, (latency_axis(finished), latency_axis(confirmed)))
    latency = head.latency
    on_madds, on_ms = head.sources["search"]["width"], latency.sources["search"]["width"]
    assert on_madds.gain_mean == pytest.approx(0.88 - 0.85, abs=1e-9)
    assert on_ms.gain_mean == pytest.approx(0.88 - 0.90, abs=1e-9)
    assert (on_madds.direction, on_ms.direction) == ("gain", "loss")
    assert on_madds.significant and on_ms.significant
    # One Holm over both axes: two tests, so each p is at least doubled (unless capped at 1).
    assert on_madds.p_holm >= min(1.0, 2 * min(on_madds.p_value, on_ms.p_value)) - 1e-12
    same, changed = axes_agree(head, latency)
    assert not same and "significant gain at matched MAdds, significant loss at matched latency" \
        in changed[0]
    assert axes_agree(head, head) == (True, [])


def test_report_of_a_measured_study_has_the_latency_view(tmp_path, monkeypatch, capsys, write_study):
    monkeypatch.setenv("CONDCONV_NAS_LOCK_DIR", str(tmp_path / "locks"))
    path = write_study(measure=MEASURE, confirm={"seeds": 2})
    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda s: None)
    run_baselines(cfg, print_fn=lambda s: None)
    run_confirm(cfg, print_fn=lambda s: None)
    results = load_results(open_storage(cfg.storage), cfg.name)
    search = results.finished[results.finished.family == "search"]
    fronts = set(front(search).number) | set(front(latency_axis(search)).number)
    assert set(results.confirmed.confirm_of.dropna().astype(int)) == fronts  # both axes' fronts confirmed
    # Every confirmed point inside the width grid's MAdds range, on either front, got its
    # controls at its MAdds (a latency-front point's cost is ms on that axis, not its count).
    grid = results.finished[results.finished.family == "width"].madds
    costs = set(results.confirmed[results.confirmed.family == "width"].madds)
    for m in search[search.number.isin(fronts)].madds:
        if grid.min() <= m <= grid.max():
            assert any(abs(c - m) <= 0.02 * m for c in costs) or (
                any(c < m for c in costs) and any(c > m for c in costs)), m
    assert (latency_axis(results.confirmed).madds > 0).all()
    out = tmp_path / "r.html"
    assert main(["report", str(path), "-o", str(out)]) == 0
    page = out.read_text()
    for needle in ("Accuracy against measured latency", "id=latency-headline",
                   "On measured latency the conclusion",
                   "Measured latency against MAdds", "fig-latency_madds", "latency ms"):
        assert needle in page, needle
    capsys.readouterr()
    assert main(["report", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert isinstance(record["latency"]["same_conclusion"], bool)


def test_latency_claims_compare_only_points_inside_the_controls_latency_span():
    # A slow front point (15 ms) inside the width grid's latency range but beyond every control's
    # measured latency: controls are solved on MAdds, so no rerun of confirm could pair it; it is
    # left out of the latency claim instead of blocking it.
    finished, confirmed = _claim_frames()
    slow = {"family": "search", "number": 103, "val_acc": 0.99, "holdout_acc": None,
            "madds": 2e7, "multiplier": None, "seed": 0, "arch_key": "s3", "latency_ms": 15.0,
            "confirm_of": None}
    runs = [{"number": 0, "val_acc": 0.9, "seed": s, "family": "search", "holdout_acc": 0.9,
             "madds": 2e7, "multiplier": None, "arch_key": "s3", "latency_ms": 15.0,
             "confirm_of": 103} for s in (1, 2, 3)]
    finished = pd.concat([finished, pd.DataFrame([slow])], ignore_index=True)
    confirmed = pd.concat([confirmed, pd.DataFrame(runs)], ignore_index=True)
    head = study_headline(finished, confirmed, (latency_axis(finished), latency_axis(confirmed)))
    on_ms = head.latency.sources["search"]["width"]
    assert any(p["number"] == 103 for p in head.latency.front["search"])
    assert on_ms.reason == "" and on_ms.points == 3  # the three points the controls span
    assert on_ms.gain_mean == pytest.approx(0.88 - 0.90, abs=1e-9) and on_ms.significant
