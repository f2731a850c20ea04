"""Baseline grids: each family scales what it says, spans the search range, and starts at the base."""

from __future__ import annotations

import dataclasses
import math

import pytest

from condconv_nas.nn.cost import count_cost
from condconv_nas.nn.spec import scale_depth, scale_width
from condconv_nas.search.baselines import ALPHA, BETA, baseline_grid, search_range, static_base
from condconv_nas.search.space import load_space
from tests.conftest import ROOT

SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_compound_constants_double_madds_per_phi():
    assert ALPHA * BETA ** 2 == pytest.approx(2.0, abs=0.01)  # Tan & Le's constraint, no resolution


def test_search_range_is_the_cheapest_sampled_architecture():
    space = load_space(ROOT / "search_spaces" / "fmnist_mbv2.yaml")
    # By hand: stages 4-6 at their least depth and width, no experts.
    stages = list(space.base.stages)
    for c in space.stages:
        s = stages[c.stage - 1]
        stages[c.stage - 1] = dataclasses.replace(
            s, repeats=c.depth[0], out_channels=scale_width(s.out_channels, min(c.width)),
            experts=(0,))
    cheapest = space.base.replace(stages=tuple(stages))
    assert search_range(space) == (count_cost(cheapest).madds, space.budget_madds)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_family_scales_what_it_names(path):
    space = load_space(path)
    base = static_base(space.base)
    grid = baseline_grid(space, points=5)
    assert {p.family for p in grid} == {"width", "depth", "compound", "experts"}
    searched = {c.stage - 1 for c in space.stages if c.experts}
    for p in grid:
        blocks = p.spec.blocks()
        assert p.madds == count_cost(p.spec).madds
        if p.family == "experts":
            # Uniform experts exactly in the searched stages, the rest of the base untouched.
            for b in blocks:
                stage = int(b.name[1:].split(".")[0]) - 1
                assert b.experts == (p.multiplier if stage in searched and p.multiplier > 1 else 0)
            assert p.spec.width_mult == 1.0 and p.spec.depth_mult == 1.0
            continue
        assert not any(b.condconv for b in blocks)  # CondConv off in every scaling family
        width, depth = {"width": (p.multiplier, 1.0), "depth": (1.0, p.multiplier),
                        "compound": (BETA ** p.multiplier, ALPHA ** p.multiplier)}[p.family]
        assert p.spec.width_mult == pytest.approx(width)
        assert p.spec.depth_mult == pytest.approx(depth)
        assert len(blocks) == sum(scale_depth(s.repeats, depth) for s in base.stages)
        assert blocks[-1].out_channels == scale_width(base.stages[-1].out_channels, width)
    for family in ("width", "depth", "compound", "experts"):
        points = [p for p in grid if p.family == family]
        anchor = [p for p in points if p.multiplier == (0.0 if family == "compound" else 1.0)]
        assert len(anchor) == 1 and anchor[0].madds == count_cost(base).madds
        layouts = [(p.spec.stem_width, p.spec.head_width, *p.spec.blocks()) for p in points]
        assert len(set(layouts)) == len(layouts)  # distinct networks within a family


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_width_and_compound_span_the_search_range(path):
    # Width moves in steps of 8 channels, so a proxy's narrow stem jumps ~1.5x at some multiplier:
    # the ends of the grid land within that step of the range's ends.
    space = load_space(path)
    lo, hi = search_range(space)
    for family in ("width", "compound"):
        madds = [p.madds for p in baseline_grid(space, (family,), points=5)]
        assert min(madds) <= 1.3 * lo and max(madds) >= hi / 1.6
        assert len(madds) >= 4
    assert math.log(hi / lo) > 0


def test_unknown_family_is_named():
    space = load_space(ROOT / "search_spaces" / "tiny.yaml")
    with pytest.raises(ValueError, match="'height'"):
        baseline_grid(space, ("width", "height"))


def test_controls_are_matched_within_two_percent_or_bracket_with_nothing_between():
    from condconv_nas.search.baselines import matched_controls

    space = load_space(ROOT / "search_spaces" / "fmnist_mbv2.yaml")
    base = static_base(space.base)
    # Every depth the family can take, by an independent scan of depth multipliers.
    depths = sorted({count_cost(base.replace(depth_mult=0.01 * i)).madds for i in range(5, 801)})
    for target in (3_000_000, 4_500_000, 6_000_000, 7_100_000):
        controls = matched_controls(space, ("width", "depth", "compound"), target)
        assert set(controls) == {"width", "depth", "compound"}
        for family, configs in controls.items():
            costs = [count_cost(c.spec).madds for c in configs]
            assert costs == [c.madds for c in configs]
            if len(configs) == 1:
                assert abs(costs[0] - target) <= 0.02 * target, (family, target)
            else:
                lo, hi = costs
                assert lo <= target < hi and all(abs(c - target) > 0.02 * target for c in costs)
                if family == "depth":  # the nearest depths on both sides
                    assert not [d for d in depths if lo < d < hi], (target, lo, hi)
        # Width and compound: the control's own multiplier rebuilds it.
        w = controls["width"][0]
        if len(controls["width"]) == 1:
            assert count_cost(base.replace(width_mult=w.multiplier)).madds == w.madds


def test_points_whose_controls_are_one_network_share_its_runs():
    from condconv_nas.nn.model import build_model
    from condconv_nas.nn.spec import ArchSpec
    from condconv_nas.search.baselines import control_runs, matched_controls

    space = load_space(ROOT / "search_spaces" / "fmnist_mbv2.yaml")
    # A point the width family can only bracket, and a second just above the dearer side of that
    # bracket: its matched control is that same network, solved to another multiplier.
    first = next(t for t in range(3_000_000, 8_000_000, 50_000)
                 if len(matched_controls(space, ("width",), t)["width"]) == 2)
    dearer = matched_controls(space, ("width",), first)["width"][1]
    second = dearer.madds + 1
    (matched,) = matched_controls(space, ("width",), second)["width"]
    assert matched.madds == dearer.madds and matched.multiplier != dearer.multiplier
    runs = control_runs(space, [first, second], {"width": (0, 10 ** 12)})

    def shapes(run: dict) -> tuple:  # the network itself, from its built weights
        model = build_model(ArchSpec.from_dict(run["baseline_spec"]))
        return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())

    networks = [shapes(r) for r in runs]
    assert len(runs) == 2 and len(set(networks)) == 2  # the cheaper side and the shared one
    costs = sorted(count_cost(ArchSpec.from_dict(r["baseline_spec"])).madds for r in runs)
    assert costs == sorted({c.madds for t in (first, second)
                            for c in matched_controls(space, ("width",), t)["width"]})
