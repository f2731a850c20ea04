"""Measured cost: the protocol (interleaving, copies, percentiles), sanity of figures, the CLI.

Timings are checked for sanity (positive, ordered, consistent), never against a speed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from condconv_nas.cli import main
from condconv_nas.nn.latency import _percentile, measure, measure_many
from condconv_nas.nn.model import build_model
from condconv_nas.nn.presets import get_preset
from condconv_nas.search.baselines import static_base

SMALL = dict(batch=8, threads=1, rounds=2, per_round=3, warmup=1)


def _condconv_layers(spec) -> int:
    """CondConv2d layers by hand: expand (when the block has one), depthwise and project."""
    return sum((2 + b.has_expand) for b in spec.blocks() if b.condconv)


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        values = list(rng.random(n))
        for q in (0, 10, 50, 90, 100):
            assert _percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_figures_are_sane_and_paths_are_reported_per_layer():
    spec = get_preset("condconv_efficientnet_b0_4e_proxy28")
    model = build_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure(model, (1, 28, 28), **SMALL)
    assert 0 < m.latency_ms_p10 <= m.latency_ms <= m.latency_ms_p90
    assert 0 < m.images_per_s_p10 <= m.images_per_s <= m.images_per_s_p90
    assert m.train_images_per_s is not None and m.train_images_per_s > 0
    assert m.samples == SMALL["rounds"] * SMALL["per_round"] and m.batch == 8 and m.threads == 1
    # Inference takes the deployment paths: 1x1 convs as a matmul, depthwise as mixed kernels.
    assert m.paths["batch 1"] == {"bmm": 12, "grouped": 6}
    assert sum(m.paths["train batch 8"].values()) == _condconv_layers(spec) == 18
    # Measuring trains a copy: the caller's weights and mode are untouched.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training
    record = m.to_dict()
    assert set(record) >= {"latency_ms", "latency_ms_p90", "images_per_s", "train_images_per_s",
                           "device"}
    json.dumps(record)


def test_models_are_measured_in_interleaved_rounds():
    calls: list[tuple[str, int]] = []
    models = {}
    for name in ("a", "b"):
        net = build_model(get_preset("efficientnet_b0_proxy28"))
        net.register_forward_pre_hook(lambda mod, args, n=name: calls.append((n, args[0].shape[0])))
        models[name] = net
    measure_many(models, (1, 28, 28), train=False, **SMALL)
    # deepcopies keep the hooks: drop the warm-up, then rounds alternate a, b, a, b.
    timed = calls[2 * (SMALL["warmup"] + 1):]
    per_model_round = SMALL["per_round"] + 1
    owners = [timed[i][0] for i in range(0, 2 * SMALL["rounds"] * per_model_round, per_model_round)]
    assert owners == ["a", "b", "a", "b"]
    assert [b for _, b in timed[:per_model_round]] == [1, 1, 1, 8]


def test_no_train_skips_the_training_step():
    m = measure(build_model(get_preset("efficientnet_b0_proxy28")), (1, 28, 28), train=False,
                **SMALL)
    assert m.train_images_per_s is None and "train batch 8" not in m.paths


def test_cli_json_gives_the_twin_and_ratios(capsys):
    args = ["latency", "--preset", "condconv_efficientnet_b0_4e_proxy28", "--batch", "4",
            "--threads", "1", "--repeats", "1", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("latency_ms", "latency_ms_p90", "images_per_s", "train_images_per_s", "device"):
        assert out[key] is not None and out[key] != 0, key
    twin = out["static_twin"]
    spec = get_preset("condconv_efficientnet_b0_4e_proxy28")
    from condconv_nas.nn.cost import count_cost

    assert out["madds"] == count_cost(spec).madds
    assert twin["madds"] == count_cost(static_base(spec)).madds
    assert out["ratios"]["madds"] == pytest.approx(out["madds"] / twin["madds"], abs=1e-4)
    assert out["ratios"]["latency"] == pytest.approx(out["latency_ms"] / twin["latency_ms"],
                                                     rel=1e-3)


def test_cli_text_names_the_device_and_a_static_net_has_no_twin(capsys):
    assert main(["latency", "--preset", "efficientnet_b0_proxy28", "--batch", "2",
                 "--repeats", "1", "--no-train", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 thread," in out and "torch" in out and "static twin" not in out


@pytest.mark.parametrize("args, needle", [
    (["--preset", "nope"], "preset 'nope' is unknown"),
    (["--preset", "efficientnet_b0_proxy28", "--batch", "0"], "--batch: must be >= 1"),
    (["--preset", "efficientnet_b0_proxy28", "--threads", "0"], "--threads: must be >= 1"),
    (["--preset", "efficientnet_b0_proxy28", "--repeats", "0"], "--repeats: must be >= 1"),
    (["--preset", "efficientnet_b0_proxy28", "--device", "tpu"], "--device"),
    (["--arch", "/nonexistent/arch.json"], "cannot read"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, capsys):
    assert main(["latency", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
