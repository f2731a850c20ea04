"""Search spaces: every shipped file loads, sampling is the only suggest site, errors name keys."""

from __future__ import annotations

import optuna
import pytest

from condconv_nas.nn.cost import count_cost
from condconv_nas.nn.presets import get_preset
from condconv_nas.nn.spec import make_divisible
from condconv_nas.search.space import SpaceError, load_space, parse_count, space_from_dict
from tests.conftest import ROOT

SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_four_space_files_ship():
    assert {p.name for p in SPACES} >= {"tiny.yaml", "fmnist_mbv2.yaml", "cifar10_effnet_b0.yaml",
                                        "cifar10_mbv2.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_space_file_samples_valid_architectures(path):
    space = load_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    labels = set(space.labels())
    feasible = 0
    for _ in range(30):
        trial = study.ask()
        spec = space.sample(trial)
        assert set(trial.params) <= labels
        feasible += count_cost(spec).madds <= space.budget_madds
        for c in space.stages:  # blocks that a depth choice removes ask for nothing
            if c.depth and c.experts:
                depth = trial.params[f"s{c.stage}_depth"]
                asked = [k for k in trial.params if k.startswith(f"s{c.stage}_b")]
                assert len(asked) == depth
        study.tell(trial, 0.0)
    assert feasible > 0  # the budget admits part of the space


class Walk:
    """A trial that takes the choices `path` names (the first choice past its end), noting how
    many choices each suggest call had."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.counts = path, []

    def suggest_categorical(self, name, choices):
        i = len(self.counts)
        self.counts.append(len(choices))
        return list(choices)[self.path[i] if i < len(self.path) else 0]

    def suggest_int(self, name, low, high):
        return self.suggest_categorical(name, range(low, high + 1))


def every_arch(space):
    """Every architecture of a space: an odometer over the choices of each suggest call."""
    path: list[int] = []
    while True:
        walk = Walk(path)
        yield space.sample(walk)
        counts = walk.counts
        path = path[: len(counts)] + [0] * (len(counts) - len(path))
        while path and path[-1] + 1 >= counts[len(path) - 1]:
            path.pop()
        if not path:
            return
        path[-1] += 1


WIDE = {"base": "mobilenet_v2_proxy28", "budget_madds": "8M", "resolution": [20, 28, 24],
        "stages": [{"stage": 2, "width": [1.5, 0.5, 1.0], "depth": [1, 2]},
                   {"stage": 6, "experts": [4, 0, 2], "width": [0.75, 1.25]}]}


@pytest.mark.parametrize("space", [load_space(SPACES[0].parent / "tiny.yaml"),
                                   space_from_dict(WIDE)], ids=["tiny", "wide"])
def test_extremes_are_the_cheapest_and_costliest_of_every_architecture(space):
    costs = [count_cost(spec).madds for spec in every_arch(space)]
    cheapest, costliest = (count_cost(s).madds for s in space.extremes())
    assert len(costs) == len(set(map(str, every_arch(space)))) > 10  # the walk saw distinct archs
    assert (cheapest, costliest) == (min(costs), max(costs))


def test_sample_by_hand():
    space = load_space(ROOT / "search_spaces" / "tiny.yaml")
    trial = optuna.trial.FixedTrial({"s5_depth": 2, "s5_b1_experts": 4, "s5_b2_experts": 0,
                                     "s6_width": 0.5, "s6_b1_experts": 4, "s6_b2_experts": 0})
    spec = space.sample(trial)
    base = get_preset("mobilenet_v2_proxy28")
    assert spec.stages[4].repeats == 2 and spec.stages[4].experts == (4, 0)
    assert spec.stages[5].out_channels == make_divisible(base.stages[5].out_channels * 0.5)
    assert spec.stages[5].experts == (4, 0)
    assert spec.stages[:4] == base.stages[:4]
    blocks = spec.blocks()
    assert [b.experts for b in blocks if b.name.startswith("s5")] == [4, 0]


def test_parse_count():
    assert parse_count("8M") == 8_000_000 and parse_count("1.5G") == 1_500_000_000
    assert parse_count(12e6) == 12_000_000 and parse_count("12e6") == 12_000_000
    assert parse_count(7) == 7 and parse_count("lots") is None and parse_count(True) is None


def _space(**kw):
    base = {"base": "mobilenet_v2_proxy28", "budget_madds": "8M",
            "stages": [{"stage": 5, "experts": [0, 4]}]}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("data, needle", [
    (_space(colour="red"), "colour: unknown key"),
    (_space(base="resnet50"), "base: preset 'resnet50' is unknown"),
    (_space(base=None), "base: is required"),
    (_space(budget_madds=-5), "budget_madds: must be a positive count"),
    (_space(budget_madds="lots"), "budget_madds"),
    (_space(stages=[]), "stages: is an empty list"),
    (_space(stages="all"), "stages: must be a list"),
    (_space(stages=[{"stage": 9, "experts": [0]}]), "stages[0].stage: must be a stage number 1..6"),
    (_space(stages=[{"stage": 2, "experts": []}]), "stages[0].experts: is an empty list"),
    (_space(stages=[{"stage": 2, "experts": [0.5]}]), "stages[0].experts: choices must be integers"),
    (_space(stages=[{"stage": 2, "width": ["wide"]}]), "stages[0].width"),
    (_space(stages=[{"stage": 2, "depth": [3, 1]}]), "stages[0].depth: needs 1 <= min <= max"),
    (_space(stages=[{"stage": 2, "depth": 3}]), "stages[0].depth: must be a range"),
    (_space(stages=[{"stage": 2}]), "stages[0]: names no choice"),
    (_space(stages=[{"stage": 2, "expert": [0]}]), "stages[0].expert: unknown key"),
    (_space(stages=[{"stage": 2, "experts": [0, 2]}, {"stage": 2, "width": [1.0]}]),
     "stage numbers repeat"),
    (_space(resolution=[28, 2]), "resolution: choices must be integers in 8..4096"),
    ([1, 2], "must be a mapping"),
])
def test_errors_name_key_and_reason(data, needle):
    with pytest.raises(SpaceError) as err:
        space_from_dict(data, "x.yaml")
    assert str(err.value).startswith("x.yaml") and needle in str(err.value)


def test_broken_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(SpaceError, match="bad.yaml: not valid YAML at line"):
        load_space(bad)
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(tmp_path / "none.yaml")
