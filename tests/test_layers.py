"""CondConv2d against a per-example reference, in float64, on every path it can take."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from condconv_nas.nn.layers import PATHS, CondConv2d, Router, choose_path

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (in, out, kernel, stride, dilation, groups, bias, batch, size)
CASES = [
    (8, 12, 1, 1, 1, 1, False, 4, 6),      # pointwise
    (8, 12, 1, 2, 1, 1, True, 3, 7),       # strided pointwise with bias
    (6, 6, 3, 1, 1, 6, False, 4, 5),       # depthwise
    (6, 6, 5, 2, 1, 6, True, 2, 9),        # strided depthwise 5x5 with bias
    (4, 4, 3, 2, 2, 4, False, 3, 10),      # strided, dilated depthwise
    (8, 12, 3, 1, 2, 1, False, 3, 8),      # dilated general conv
    (8, 12, 3, 2, 1, 4, True, 2, 7),       # grouped, strided
    (5, 7, 3, 1, 1, 1, True, 1, 4),        # batch of one
]


def reference(conv: CondConv2d, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """One example at a time: kernel = sum_e r_e W_e, then conv2d."""
    outs = []
    for i in range(x.shape[0]):
        kernel = (r[i].view(-1, 1, 1, 1, 1) * conv.weight).sum(0)
        bias = None if conv.bias is None else (r[i].view(-1, 1) * conv.bias).sum(0)
        outs.append(F.conv2d(x[i : i + 1], kernel, bias, conv.stride, conv.padding,
                             conv.dilation, conv.groups))
    return torch.cat(outs)


def _paths_for(k: int, groups: int, experts: int) -> list[str]:
    paths = ["grouped", "experts", "auto"]
    if k == 1 and groups == 1:
        paths.append("bmm")
    if experts == 1:
        paths.append("static")
    return paths


def _depthwise(case) -> bool:
    cin, cout, _, _, _, g = case[:6]
    return g == cin == cout


def _grads(conv, x, r, path):
    conv.path = path
    for t in (x, r, conv.weight, conv.bias):
        if t is not None:
            t.grad = None
    y = reference(conv, x, r) if path == "reference" else conv(x, r)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)).sum().backward()
    grads = [t.grad.clone() for t in (x, r, conv.weight, conv.bias) if t is not None]
    return y.detach(), grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("experts", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_outputs_and_gradients_match_per_example_reference(case, experts, device):
    cin, cout, k, s, d, g, bias, b, size = case
    conv = CondConv2d(cin, cout, k, s, dilation=d, groups=g, bias=bias, num_experts=experts)
    conv = conv.double().to(device)
    x = torch.randn(b, cin, size, size, dtype=torch.float64, device=device, requires_grad=True)
    r = torch.rand(b, experts, dtype=torch.float64, device=device, requires_grad=True)
    y_ref, g_ref = _grads(conv, x, r, "reference")
    for path in _paths_for(k, g, experts) + (["taps"] if _depthwise(case) else []):
        y, grads = _grads(conv, x, r, path)
        assert y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-9, msg=f"output, path {path}")
        for name, got, want in zip(["input", "routing", "weight", "bias"], grads, g_ref):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9, msg=f"d{name}, path {path}")


def test_channels_last_input_gives_same_result():
    conv = CondConv2d(8, 16, 1, num_experts=4).double()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    r = torch.rand(4, 4, dtype=torch.float64)
    for path in ("bmm", "grouped", "experts"):
        conv.path = path
        want = conv(x, r)
        got = conv(x.contiguous(memory_format=torch.channels_last), r)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_each_expert_initialised_like_a_conv_of_that_shape():
    conv = CondConv2d(16, 32, 3, num_experts=6, bias=True)
    ref = torch.nn.Conv2d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 9)  # nn.Conv2d: kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), ..)
    for e in range(6):
        w = conv.weight[e]
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.95 * bound  # fills the range, not a narrower init
        assert abs(w.std().item() - ref.weight.std().item()) < 0.1 * ref.weight.std().item()
    assert conv.bias.abs().max() <= bound
    assert not torch.equal(conv.weight[0], conv.weight[1])


def test_bmm_path_rejects_shapes_it_cannot_compute():
    conv = CondConv2d(4, 4, 3, num_experts=2)
    conv.path = "bmm"
    with pytest.raises(ValueError, match="1x1"):
        conv(torch.randn(1, 4, 5, 5), torch.rand(1, 2))


def test_taps_path_refuses_a_conv_that_is_not_depthwise():
    conv = CondConv2d(4, 8, 3, groups=4, num_experts=2)
    conv.path = "taps"
    with pytest.raises(ValueError, match="depthwise"):
        conv(torch.randn(1, 4, 5, 5), torch.rand(1, 2))


@pytest.mark.parametrize("k, groups", [(3, 6), (1, 1), (3, 1)])
def test_traced_grouped_path_takes_any_batch(k, groups):
    conv = CondConv2d(6, 6, k, groups=groups, bias=True, num_experts=3).double().eval()
    conv.path = "grouped"
    wrapped = _Routed(conv)
    traced = torch.jit.trace(wrapped, torch.randn(2, 6, 7, 7, dtype=torch.float64),
                             check_trace=False)
    for b in (1, 3, 5):
        x = torch.randn(b, 6, 7, 7, dtype=torch.float64)
        torch.testing.assert_close(traced(x), reference(conv, x, wrapped.route(x)), rtol=0,
                                   atol=1e-9)


class _Routed(torch.nn.Module):
    """A CondConv with its own router, so a trace sees one input."""

    def __init__(self, conv: CondConv2d) -> None:
        super().__init__()
        self.conv, self.router = conv, Router(conv.in_channels, conv.num_experts).double()

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return self.router(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.router(x))


def test_choose_path_picks_a_path_that_can_compute_the_shape():
    for k, g in ((1, 1), (3, 1), (3, 8), (1, 2)):
        path = choose_path(k, g, 8)
        assert path in PATHS and (path != "bmm" or (k == 1 and g == 1))
    assert choose_path(3, 1, 1) == "static"
    assert choose_path(1, 1, 8) == "bmm"
    assert choose_path(3, 144, 8) == "grouped"


def test_padded_pointwise_conv_matches_reference():
    conv = CondConv2d(4, 6, 1, padding=1, num_experts=3).double()
    x, r = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)
    torch.testing.assert_close(conv(x, r), reference(conv, x, r), rtol=0, atol=1e-9)


def test_sigmoid_router_is_pool_linear_sigmoid():
    router = Router(6, 4).double()
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    want = torch.sigmoid(x.mean((2, 3)) @ router.fc.weight.T + router.fc.bias)
    torch.testing.assert_close(router(x), want)


def test_softmax_router_sums_to_one_and_temperature_flattens():
    x = torch.randn(5, 6, 4, 4)
    sharp = Router(6, 4, kind="softmax", temperature=0.5)
    flat = Router(6, 4, kind="softmax", temperature=30.0)
    flat.load_state_dict(sharp.state_dict())
    torch.testing.assert_close(sharp(x).sum(1), torch.ones(5))
    assert flat(x).std(1).mean() < sharp(x).std(1).mean()


def test_routing_dropout_only_in_training():
    router = Router(6, 8, dropout=0.5)
    x = torch.randn(64, 6, 2, 2)
    router.train()
    assert (router(x) == 0).float().mean() > 0.3
    router.eval()
    assert (router(x) == 0).sum() == 0
