"""MAdds and params: published figures, a hand formula, and the ptflops cross-check."""

from __future__ import annotations

import random

import pytest
import torch

from condconv_nas.nn.cost import count_cost, ptflops_cost
from condconv_nas.nn.model import build_model
from condconv_nas.nn.presets import get_preset, preset_names
from condconv_nas.nn.spec import ArchSpec, StageSpec

from .test_spec import random_spec


def _close(value: float, published: float, tol: float = 0.02) -> bool:
    return abs(value - published) <= tol * published


def test_efficientnet_b0_matches_tan_and_le():
    cost = count_cost(get_preset("efficientnet_b0"))
    assert _close(cost.madds, 0.39e9), cost.madds   # Tan & Le 2019, Table 2: 0.39B FLOPs
    assert _close(cost.params, 5.3e6), cost.params  # 5.3M


def test_condconv_efficientnet_b0_8e_matches_the_condconv_paper():
    cost = count_cost(get_preset("condconv_efficientnet_b0_8e"))
    assert _close(cost.madds, 413e6), cost.madds    # Yang et al. 2019, Table 2: 413M MAdds
    assert _close(cost.params, 24.0e6), cost.params  # 24.0M


def test_mobilenet_v2_matches_sandler_et_al():
    cost = count_cost(get_preset("mobilenet_v2"))
    assert _close(cost.madds, 300e6), cost.madds    # Sandler et al. 2018, Table 4: 300M MAdds
    assert _close(cost.params, 3.4e6, 0.04), cost.params  # 3.4M printed; the layout has 3.50M


@pytest.mark.parametrize("width, depth, params", [
    # torchvision's model table (EfficientNet_B1..B4 weights, 1000 classes): exact counts
    (1.0, 1.1, 7_794_184), (1.1, 1.2, 9_109_994), (1.2, 1.4, 12_233_232), (1.4, 1.8, 19_341_616),
])
def test_scaled_efficientnets_have_torchvisions_exact_param_counts(width, depth, params):
    spec = get_preset("efficientnet_b0").replace(width_mult=width, depth_mult=depth)
    assert count_cost(spec).params == params


def test_reference_layouts_have_exact_trainable_params():
    assert count_cost(get_preset("efficientnet_b0")).params == 5_288_548
    assert count_cost(get_preset("mobilenet_v2")).params == 3_504_872


def test_hand_formula_for_a_tiny_condconv_network():
    # stem 3->8 3x3 s2 on 8x8 -> 4x4; one CondConv block 8->16 (expand 2, k3, E=4, no SE); no head.
    spec = ArchSpec(name="tiny", stem_channels=8, head_channels=0, input_size=8, num_classes=10,
                    stages=(StageSpec(1, 3, 1, 2.0, 16, 0.0, (4,)),))
    hw = 4 * 4
    stem = hw * 8 * 3 * 9
    router = hw * 8 + (8 * 4 + 4)                   # pool + linear with bias
    expand, dw, proj = 16 * 8, 16 * 9, 16 * 16      # kernel params of each CondConv
    convs = hw * (expand + dw + proj)
    mixing = 4 * (expand + dw + proj)
    head = hw * 16 + (16 * 10 + 10)                 # pool + classifier
    cost = count_cost(spec)
    assert cost.madds == stem + router + convs + mixing + head
    bn = 2 * (8 + 16 + 16 + 16)
    assert cost.params == 8 * 27 + (8 * 4 + 4) + 4 * (expand + dw + proj) + bn + 16 * 10 + 10


def test_mixing_is_experts_times_kernel_params():
    base = {x.name: x for x in count_cost(get_preset("efficientnet_b0")).layers}
    cc = count_cost(get_preset("condconv_efficientnet_b0_8e")).layers
    # A CondConv layer holds 8 kernels where its static twin holds 1 (BN alike): W = diff / 7.
    kernels = [(x.params - base[x.name].params) // 7 for x in cc if x.kind == "condconv"]
    assert len(kernels) == 8 * 3  # 8 blocks in the last three stages, expand + dw + project
    assert sum(x.madds for x in cc if x.kind == "mixing") == 8 * sum(kernels)
    assert sum(x.madds for x in cc if x.kind == "condconv") == sum(
        base[x.name].madds for x in cc if x.kind == "condconv")


@pytest.mark.parametrize("name", preset_names())
def test_analytic_count_agrees_with_ptflops_and_the_model(name):
    spec = get_preset(name)
    cost = count_cost(spec)
    madds, params = ptflops_cost(spec)
    assert abs(madds - cost.madds) <= 0.005 * cost.madds
    assert params == cost.params == sum(p.numel() for p in build_model(spec).parameters())


def test_analytic_count_agrees_with_ptflops_on_random_specs():
    rng = random.Random(7)
    for _ in range(12):
        spec = random_spec(rng)
        cost = count_cost(spec)
        madds, params = ptflops_cost(spec)
        assert abs(madds - cost.madds) <= 0.005 * cost.madds, spec
        assert params == cost.params


def test_per_layer_rows_sum_to_totals():
    cost = count_cost(get_preset("condconv_efficientnet_b0_4e_proxy32"))
    assert sum(x.madds for x in cost.layers) == cost.madds
    assert sum(x.params for x in cost.layers) == cost.params
    assert {"conv", "condconv", "mixing", "linear", "pool"} <= {x.kind for x in cost.layers}


def test_ptflops_cost_leaves_paths_as_they_were():
    spec = get_preset("condconv_efficientnet_b0_4e_proxy28")
    model = build_model(spec)
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    before = model(x)
    ptflops_cost(spec)
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("name", ["condconv_efficientnet_b0_8e_proxy28",
                                  "condconv_efficientnet_b0_4e_proxy32", "efficientnet_b0_proxy28"])
def test_onnx_graph_does_the_counted_work_tap_by_tap(name):
    # The ONNX export runs each CondConv depthwise conv tap by tap: k*k element-wise
    # multiply-adds per output, exactly the conv's count, which ptflops' aten backend does not
    # see (it counts convs and matmuls). Everything else is counted as in the TorchScript graph.
    spec = get_preset(name)
    cost = count_cost(spec)
    taps = sum(x.madds for x in cost.layers if x.kind == "condconv" and x.name.endswith(".dw"))
    assert ptflops_cost(spec, onnx=True)[0] == ptflops_cost(spec)[0] - taps
