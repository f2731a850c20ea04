"""build_model: every preset builds and runs; CondConv blocks share one router."""

from __future__ import annotations

import pytest
import torch

from condconv_nas.nn.layers import CondConv2d, Router
from condconv_nas.nn.model import MBConvBlock, build_model
from condconv_nas.nn.presets import get_preset, preset_names


@pytest.mark.parametrize("name", [n for n in preset_names() if "proxy" in n])
def test_proxy_presets_train_one_step(name):
    spec = get_preset(name)
    model = build_model(spec)
    x = torch.randn(4, spec.in_channels, spec.input_size, spec.input_size)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in preset_names() if "proxy" not in n])
def test_full_presets_run_at_224(name):
    spec = get_preset(name)
    model = build_model(spec).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_condconv_blocks_have_one_router_shared_by_three_convs():
    spec = get_preset("condconv_efficientnet_b0_8e")
    model = build_model(spec)
    blocks = [m for m in model.modules() if isinstance(m, MBConvBlock)]
    cc = [b for b in blocks if b.router is not None]
    assert len(cc) == sum(b.condconv for b in spec.blocks()) == 8
    for block in cc:
        convs = [m for m in block.modules() if isinstance(m, CondConv2d)]
        assert len(convs) == 3 and all(c.num_experts == 8 for c in convs)
        assert sum(isinstance(m, Router) for m in block.modules()) == 1
        assert not any(isinstance(m, CondConv2d) for m in block.se.modules())  # SE stays static
    static = [b for b in blocks if b.router is None]
    assert not any(isinstance(m, CondConv2d) for b in static for m in b.modules())


def test_router_weights_reach_every_condconv_of_the_block():
    block = build_model(get_preset("condconv_efficientnet_b0_4e_proxy28")).blocks[-1]
    seen = []
    for m in block.modules():
        if isinstance(m, CondConv2d):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    block(torch.randn(2, block.router.fc.in_features, 4, 4))
    assert len(seen) == 3 and all(r is seen[0] for r in seen)


def test_experts_one_is_a_static_block():
    spec = get_preset("efficientnet_b0_proxy28")
    stage = spec.stages[-1]
    one = spec.replace(stages=spec.stages[:-1] + (type(stage)(**{**stage.__dict__,
                                                                 "experts": (1,)}),))
    assert not any(isinstance(m, (CondConv2d, Router)) for m in build_model(one).modules())
