"""ArchSpec: JSON round trip, validation that names the field, and the shared scaling rules."""

from __future__ import annotations

import json
import random

import pytest

from condconv_nas.nn.presets import get_preset, preset_names
from condconv_nas.nn.spec import ArchSpec, SpecError, StageSpec, make_divisible, scale_depth


@pytest.mark.parametrize("name", preset_names())
def test_json_round_trip_of_every_preset(name):
    spec = get_preset(name)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert again.blocks() == spec.blocks()


def test_round_trip_of_varied_specs(tmp_path):
    rng = random.Random(1)
    for i in range(20):
        spec = random_spec(rng)
        path = tmp_path / f"s{i}.json"
        path.write_text(spec.to_json())
        assert ArchSpec.load(path) == spec


def random_spec(rng: random.Random) -> ArchSpec:
    """A valid spec with every field varied (also used by the cost tests)."""
    stages = []
    for _ in range(rng.randint(1, 5)):
        repeats = rng.randint(1, 3)
        per_block = rng.random() < 0.5
        experts = tuple(rng.choice([0, 1, 2, 4, 8]) for _ in range(repeats if per_block else 1))
        stages.append(StageSpec(repeats=repeats, kernel=rng.choice([1, 3, 5, 7]),
                                stride=rng.choice([1, 2]), expand=float(rng.choice([1, 3, 4, 6])),
                                out_channels=rng.choice([8, 12, 16, 24, 40]),
                                se_ratio=rng.choice([0.0, 0.25]), experts=experts))
    return ArchSpec(
        stages=tuple(stages), name="random", stem_channels=rng.choice([8, 16, 32]),
        stem_stride=rng.choice([1, 2]), head_channels=rng.choice([0, 64, 128]),
        act=rng.choice(["relu", "relu6", "swish", "hswish"]), input_size=rng.choice([16, 28, 32]),
        in_channels=rng.choice([1, 3]), num_classes=rng.choice([10, 100]),
        width_mult=rng.choice([0.5, 1.0, 1.25]), depth_mult=rng.choice([1.0, 1.5, 2.0]),
    )


def _stage(**kw):
    base = {"repeats": 1, "kernel": 3, "stride": 1, "expand": 6, "out_channels": 16}
    return {"stages": [dict(base, **kw)]}


@pytest.mark.parametrize(
    "data, field",
    [
        (_stage(out_channels=-8), "stages[0].out_channels"),
        (_stage(stride=3), "stages[0].stride"),
        (_stage(experts=0.5), "stages[0].experts"),
        (_stage(experts=[2, 0.5]), "stages[0].experts[1]"),
        (_stage(kernel=4), "stages[0].kernel"),
        (_stage(kernel="3"), "stages[0].kernel"),
        (_stage(repeats=0), "stages[0].repeats"),
        (_stage(expand=0.5), "stages[0].expand"),
        (_stage(kernal=3), "stages[0].kernal"),
        (_stage(experts=[2, 2, 2]), "stages[0].experts"),
        (_stage(se_ratio=True), "stages[0].se_ratio"),
        ({"stages": []}, "stages"),
        ({}, "stages"),
        ({"stages": [1]}, "stages[0]"),
        (dict(_stage(), act="gelu"), "act"),
        (dict(_stage(), width_mult=0), "width_mult"),
        (dict(_stage(), input_size=4), "input_size"),
        (dict(_stage(), num_classes=0), "num_classes"),
        (dict(_stage(), routing="argmax"), "routing"),
        (dict(_stage(), depth_mult=float("nan")), "depth_mult"),
        (dict(_stage(), colour="red"), "colour"),
    ],
)
def test_validation_names_the_field(data, field):
    with pytest.raises(SpecError) as err:
        ArchSpec.from_dict(data)
    message = str(err.value)
    assert f"spec.{field}:" in message
    assert "\n" not in message


def test_load_reports_the_file_and_rejects_other_formats(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="bad.json: not valid JSON"):
        ArchSpec.load(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "timm/model", "spec": {}}))
    with pytest.raises(SpecError, match="format 'timm/model'"):
        ArchSpec.load(other)
    wrapped = tmp_path / "arch.json"
    spec = get_preset("mobilenet_v2_proxy28")
    wrapped.write_text(json.dumps({"format": "condconv-nas/arch", "version": 1,
                                   "spec": spec.to_dict()}))
    assert ArchSpec.load(wrapped) == spec
    assert ArchSpec.load(tmp_path) == spec  # an export folder: its arch.json
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="empty/arch.json: cannot read"):
        ArchSpec.load(tmp_path / "empty")


def test_make_divisible_follows_the_efficientnet_rule():
    # Hand-worked: round to the nearest multiple of 8, bumped up when that is >10% below.
    assert make_divisible(32 * 1.1) == 32     # 35.2 -> 32 (9% below, kept)
    assert make_divisible(1280 * 1.2) == 1536
    assert make_divisible(40 * 1.1) == 48      # 44 -> 48 (ties round up)
    assert make_divisible(16 * 0.5) == 8
    assert make_divisible(3) == 8              # never below one divisor
    assert make_divisible(36.9) == 40          # 32 would be 13% below


def test_scale_depth_rounds_up():
    # EfficientNet-B3 (depth 1.4) stage repeats in timm: 1,2,2,3,3,4,1 -> 2,3,3,5,5,6,2
    assert [scale_depth(r, 1.4) for r in (1, 2, 2, 3, 3, 4, 1)] == [2, 3, 3, 5, 5, 6, 2]
    assert scale_depth(3, 1.1) == 4 and scale_depth(10, 1.1) == 11
    assert scale_depth(1, 0.2) == 1


def test_experts_past_the_list_take_the_last_entry():
    spec = get_preset("efficientnet_b0").replace(depth_mult=2.0)
    blocks = [b for b in spec.blocks() if b.name.startswith("s6.")]
    assert len(blocks) == 8 and all(b.experts == 0 for b in blocks)
    stage = StageSpec(repeats=2, kernel=3, stride=1, expand=6.0, out_channels=16, experts=(4, 8))
    assert [stage.experts_at(i) for i in range(4)] == [4, 8, 8, 8]
