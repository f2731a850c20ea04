"""Path choice by timing: it takes the fastest measured path, remembers it, and stays exact."""

from __future__ import annotations

import json

import pytest
import torch

from condconv_nas.nn import pathtune
from condconv_nas.nn.layers import CondConv2d


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Tuning on, a clean memory and no cache file; everything restored afterwards."""
    monkeypatch.delenv(pathtune.ENV_CACHE, raising=False)
    pathtune.reset()
    pathtune.set_tuning(True)
    pathtune.set_cache_file(None)  # never the user's cache folder
    yield tmp_path
    pathtune.reset()


def _fake_times(monkeypatch, times: dict[str, float]) -> list[tuple]:
    calls: list[tuple] = []

    def fake(layer, x, r, paths, rounds=pathtune.ROUNDS):
        calls.append((tuple(paths), torch.is_grad_enabled()))
        return {p: [times[p]] * rounds for p in paths}

    monkeypatch.setattr(pathtune, "time_paths", fake)
    return calls


def test_takes_the_fastest_measured_path_and_times_each_shape_once(tuning, monkeypatch):
    calls = _fake_times(monkeypatch, {"bmm": 3.0, "grouped": 1.0, "experts": 2.0})
    conv = CondConv2d(8, 16, 1, num_experts=4)
    x, r = torch.randn(4, 8, 5, 5), torch.rand(4, 4)
    assert conv.resolve_path(x, r) == "grouped"
    assert conv.resolve_path(x, r) == "grouped"
    assert calls == [(("bmm", "grouped", "experts"), True)]
    with torch.no_grad():  # inference is its own shape: forward-only timing
        conv.resolve_path(x, r)
    conv.resolve_path(torch.randn(3, 8, 5, 5), r[:3])  # another batch size
    assert [c[1] for c in calls] == [True, False, True]


def test_each_layer_remembers_its_choice_without_rebuilding_the_key(tuning, monkeypatch):
    calls = _fake_times(monkeypatch, {"bmm": 3.0, "grouped": 1.0, "experts": 2.0})
    keys: list[str] = []
    real = pathtune.shape_key
    monkeypatch.setattr(pathtune, "shape_key", lambda layer, x: keys.append(real(layer, x)) or keys[-1])
    conv = CondConv2d(8, 16, 1, num_experts=4)
    x, r = torch.randn(4, 8, 5, 5), torch.rand(4, 4)
    assert [conv.resolve_path(x, r) for _ in range(3)] == ["grouped"] * 3
    assert len(keys) == 1
    # What the full key tells apart, the memo tells apart too: layout, autocast dtype, grad mode.
    conv.resolve_path(x.contiguous(memory_format=torch.channels_last), r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv.resolve_path(x, r)
    with torch.no_grad():
        conv.resolve_path(x, r)
    assert len(set(keys)) == len(keys) == 4 and len(calls) == 4
    # Forgetting every choice reaches the layers' memos as well.
    pathtune.clear()
    conv.resolve_path(x, r)
    assert len(keys) == 5 and len(calls) == 5


def test_depthwise_candidates_exclude_bmm_and_one_expert_is_never_timed(tuning, monkeypatch):
    calls = _fake_times(monkeypatch, {"grouped": 2.0, "experts": 1.0})
    dw = CondConv2d(6, 6, 3, groups=6, num_experts=3)
    assert dw.resolve_path(torch.randn(2, 6, 5, 5), torch.rand(2, 3)) == "experts"
    one = CondConv2d(6, 6, 3, groups=6, num_experts=1)
    assert one.resolve_path(torch.randn(2, 6, 5, 5), torch.rand(2, 1)) == "static"
    assert calls == [(("grouped", "experts"), True)]


def test_off_switch_and_missing_routing_fall_back_to_the_rule(tuning, monkeypatch):
    calls = _fake_times(monkeypatch, {"bmm": 3.0, "grouped": 1.0, "experts": 2.0})
    conv = CondConv2d(32, 96, 1, num_experts=4)
    x, r = torch.randn(64, 32, 16, 16), torch.rand(64, 4)
    rule = conv.rule_path()
    assert rule == "bmm"  # the fitted rule
    assert conv.resolve_path(x) == rule  # nothing to time without routing weights
    pathtune.set_tuning(False)
    assert conv.resolve_path(x, r) == rule
    monkeypatch.setenv(pathtune.ENV_TUNING, "0")
    pathtune.set_tuning(None)
    assert not pathtune.enabled() and conv.resolve_path(x, r) == rule
    assert calls == []


def test_nothing_is_timed_while_tracing(tuning, monkeypatch):
    calls = _fake_times(monkeypatch, {"bmm": 3.0, "grouped": 1.0, "experts": 2.0})
    conv = CondConv2d(8, 16, 1, num_experts=2).eval().requires_grad_(False)
    r = torch.rand(2, 2)
    with torch.no_grad():
        torch.jit.trace(lambda x: conv(x, r), torch.randn(2, 8, 4, 4), check_trace=False)
    assert calls == []


def test_real_timing_chooses_a_candidate_and_the_result_stays_exact(tuning):
    conv = CondConv2d(16, 24, 1, num_experts=4).double()
    x = torch.randn(8, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    r = torch.rand(8, 4, dtype=torch.float64, requires_grad=True)
    y = conv(x, r)  # the first call times the paths, then computes with the winner
    assert conv.weight.grad is None  # timing never accumulates into the parameters
    (key, chosen), = pathtune.choices().items()
    assert chosen in ("bmm", "grouped", "experts") and "|train|" in key and "b8 16->24 k1" in key
    conv.path = "experts"
    torch.testing.assert_close(y, conv(x, r), rtol=0, atol=1e-12)
    times = pathtune.time_paths(conv, x, r, pathtune.candidates(conv))
    assert set(times) == {"bmm", "grouped", "experts"}
    assert all(len(ts) == pathtune.ROUNDS and all(0 < t < 10 for t in ts) for ts in times.values())


def test_a_path_replaces_the_rule_only_on_a_clear_win():
    rule = [1.0, 1.0, 1.0, 1.0, 1.0]
    # Clearly faster by least, median and in every paired round: taken.
    assert pathtune.decide({"grouped": rule, "bmm": [0.8, 0.82, 0.79, 0.81, 0.8]}, "grouped") == "bmm"
    # A single lucky round (a neighbour paused once): fastest by its least, slower by median.
    lucky = [0.5, 1.1, 1.2, 1.05, 1.1]
    assert pathtune.decide({"grouped": rule, "bmm": lucky}, "grouped") == "grouped"
    # Within the margin: 3% faster throughout is noise here, not a reason to leave the rule.
    assert pathtune.decide({"grouped": rule, "bmm": [0.97] * 5}, "grouped") == "grouped"
    # Faster by least and median but losing two of five paired rounds: not clear.
    assert pathtune.decide({"grouped": [1.0, 1.0, 1.0, 0.6, 0.6],
                            "bmm": [0.5, 0.55, 0.5, 0.7, 0.7]}, "grouped") == "grouped"
    # The rule's own path wins: kept, however close.
    assert pathtune.decide({"grouped": [0.9] * 5, "bmm": [0.91] * 5}, "grouped") == "grouped"


def test_a_study_file_draws_on_the_machine_cache_and_the_first_choice_stored_wins(tuning,
                                                                                 monkeypatch):
    machine = tuning / "machine.json"
    machine.write_text(json.dumps({"known-shape": "bmm"}))
    pathtune.set_cache_file(machine)
    study = tuning / "study" / "paths.json"
    pathtune.use_study_file(study)
    assert not study.exists()  # shapes enter the study's file as it meets them
    # Another worker stored a choice for a shape after this one looked: this one adopts it.
    assert pathtune._save(study, "new-shape", "grouped") == "grouped"
    assert pathtune._save(study, "new-shape", "experts") == "grouped"
    # A shape timed here lands in the study's file and the machine's, whose other entries stay.
    _fake_times(monkeypatch, {"bmm": 1.0, "grouped": 3.0, "experts": 2.0})
    conv = CondConv2d(8, 16, 1, num_experts=4)
    conv.resolve_path(torch.randn(4, 8, 5, 5), torch.rand(4, 4))
    (key,) = set(json.loads(study.read_text())) - {"new-shape"}
    assert json.loads(study.read_text())[key] == json.loads(machine.read_text())[key]
    assert json.loads(machine.read_text())["known-shape"] == "bmm"
    # The machine's cache changing later (tuned elsewhere) leaves the study's choices alone.
    machine.write_text(json.dumps({key: "experts"}))
    pathtune.use_study_file(study)
    assert json.loads(study.read_text())[key] != "experts"


def _shape(conv, x) -> str:
    return pathtune.shape_key(conv, x)


def _study_with_a_machine_choice(tuning):
    """A layer and input, the rule's path and another one the machine's cache holds for the
    shape, with a study's file in use: (conv, x, r, rule, other, machine file, study file)."""
    conv = CondConv2d(8, 16, 1, num_experts=4)
    x, r = torch.randn(4, 8, 5, 5), torch.rand(4, 4)
    rule = conv.rule_path()
    other = next(p for p in pathtune.candidates(conv) if p != rule)
    machine, study = tuning / "machine.json", tuning / "study.json"
    machine.write_text(json.dumps({_shape(conv, x): other}))  # tuned under load, say
    pathtune.set_cache_file(machine)
    pathtune.use_study_file(study)
    return conv, x, r, rule, other, machine, study


def test_a_machine_choice_is_rechecked_before_a_study_adopts_it_and_dropped_when_the_rule_wins(
        tuning, monkeypatch):
    conv, x, r, rule, other, machine, study = _study_with_a_machine_choice(tuning)
    # Timed again now, the cached path is slower than the rule's: the rule is taken and kept.
    calls = _fake_times(monkeypatch, {rule: 1.0, other: 2.0, **{p: 3.0 for p in
                                      pathtune.candidates(conv) if p not in (rule, other)}})
    assert conv.resolve_path(x, r) == rule
    assert calls == [((rule, other), True)]  # the two paths only, not a full tuning
    assert json.loads(machine.read_text())[_shape(conv, x)] == rule
    assert json.loads(study.read_text())[_shape(conv, x)] == rule


def test_a_machine_choice_that_wins_again_is_kept_and_a_studys_own_is_never_rechecked(
        tuning, monkeypatch):
    conv, x, r, rule, other, machine, study = _study_with_a_machine_choice(tuning)
    calls = _fake_times(monkeypatch, {p: 1.0 if p == other else 2.0
                                      for p in pathtune.candidates(conv)})
    assert conv.resolve_path(x, r) == other  # a clear win again
    assert json.loads(study.read_text())[_shape(conv, x)] == other
    assert len(calls) == 1
    # Resumed (a fresh process): the study's stored choice is used as it is, whatever timing says.
    pathtune.clear()
    pathtune.use_study_file(study)
    calls = _fake_times(monkeypatch, {p: 2.0 if p == other else 1.0
                                      for p in pathtune.candidates(conv)})
    fresh = CondConv2d(8, 16, 1, num_experts=4)
    assert fresh.resolve_path(x, r) == other and calls == []


def test_choices_persist_in_the_cache_file_and_a_torn_file_is_ignored(tuning, monkeypatch):
    file = tuning / "paths.json"
    pathtune.set_cache_file(file)
    _fake_times(monkeypatch, {"bmm": 3.0, "grouped": 1.0, "experts": 2.0})
    conv = CondConv2d(8, 16, 1, num_experts=4)
    x, r = torch.randn(4, 8, 5, 5), torch.rand(4, 4)
    conv.resolve_path(x, r)
    stored = json.loads(file.read_text())
    assert list(stored.values()) == ["grouped"]
    # A fresh process reads the file and times nothing for the shape it holds.
    pathtune.clear()
    stored[next(iter(stored))] = "experts"
    file.write_text(json.dumps(stored))
    calls = _fake_times(monkeypatch, {"bmm": 3.0, "grouped": 1.0, "experts": 2.0})
    assert conv.resolve_path(x, r) == "experts" and calls == []
    # A torn file costs a new measurement, not the run; the file is rewritten whole.
    pathtune.clear()
    file.write_text('{"half a')
    assert conv.resolve_path(x, r) == "grouped" and len(calls) == 1
    assert list(json.loads(file.read_text()).values()) == ["grouped"]


def test_cache_file_from_the_environment_or_the_users_cache_folder(tuning, monkeypatch):
    monkeypatch.setenv(pathtune.ENV_CACHE, str(tuning / "env.json"))
    pathtune.reset()
    assert pathtune.cache_file() == tuning / "env.json"
    monkeypatch.setenv(pathtune.ENV_CACHE, "off")
    assert pathtune.cache_file() is None
    monkeypatch.delenv(pathtune.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tuning / "xdg"))
    assert pathtune.cache_file() == tuning / "xdg" / "condconv-nas" / "paths.json"


def test_compiled_model_takes_the_rule_and_matches_eager(tuning):
    conv = CondConv2d(8, 16, 1, num_experts=4)
    x, r = torch.randn(4, 8, 5, 5), torch.rand(4, 4)
    compiled = torch.compile(conv)
    y = compiled(x, r)
    assert pathtune.choices() == {}  # nothing timed inside the graph
    conv.path = conv.rule_path()
    torch.testing.assert_close(y, conv(x, r))
