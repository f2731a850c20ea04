"""Building blocks: CondConv2d and its router, squeeze-excite, conv-bn-act."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import pathtune

__all__ = [
    "PATHS",
    "CondConv2d",
    "ConvBnAct",
    "Router",
    "SqueezeExcite",
    "choose_path",
    "deploy_path",
    "make_activation",
    "per_example_conv",
    "set_deploy_paths",
]

# How CondConv2d can compute its output. All are exact; they differ in speed by shape and device.
#   static:  one expert -> a plain conv scaled by the routing weight
#   bmm:     1x1 conv, groups 1 -> per-example kernels, one batched matmul
#   grouped: per-example kernels, batch folded into the groups of one conv
#   experts: every expert on the whole batch as one conv, outputs mixed by the routing weights
#   taps:    depthwise only: per-example kernels applied tap by tap to shifted views (no grouped
#            conv, so an exported graph with a free batch size needs no batch-dependent groups)
PATHS = ("static", "bmm", "grouped", "experts", "taps")


@torch.jit.script_if_tracing
def per_example_conv(x: torch.Tensor, kernels: torch.Tensor, stride: int, padding: int,
                     dilation: int, groups: int) -> torch.Tensor:
    """Each example convolved with its own kernel [B, out, in/groups, k, k], as one grouped conv.

    Scripted when traced, so an exported graph computes the groups from the batch it is given
    (at batch 1: the kernel mixed once, then one ordinary conv) instead of freezing them.
    """
    b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    o = kernels.shape[1]
    weight = kernels.reshape(b * o, kernels.shape[2], kernels.shape[3], kernels.shape[4])
    y = F.conv2d(x.reshape(1, b * c, h, w), weight, None, [stride, stride], [padding, padding],
                 [dilation, dilation], b * groups)
    return y.reshape(b, o, y.shape[2], y.shape[3])


def choose_path(kernel: int, groups: int, num_experts: int) -> str:
    """The fitted rule: the batched matmul for 1x1 convs, the grouped conv for the others.

    It is within 10% of the fastest path on every preset shape on CPU (bench/condconv_layer.py,
    2 cores) when backward receives a dense gradient, as it does behind BatchNorm in training, and
    it is what the H100 and H200 runs of that bench chose (those timed backward through `.sum()`).
    (An earlier CPU rule sent small and very large 1x1 kernels elsewhere; those exceptions came
    from timing backward through `.sum()`, whose stride-0 gradient slows the matmul's backward.)
    Paths are chosen by timing by default (pathtune.py); this rule is the fallback.
    """
    if num_experts == 1:
        return "static"
    return "bmm" if kernel == 1 and groups == 1 else "grouped"


class CondConv2d(nn.Module):
    """Conditionally parameterized conv (Yang et al. 2019): kernel = sum_e r_e * W_e per example."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.padding = (kernel_size - 1) // 2 * dilation if padding is None else padding
        self.num_experts = num_experts
        self.path = "auto"  # or one of PATHS, to force a computation (bench, tests)
        shape = (num_experts, out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(num_experts, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every expert as nn.Conv2d initialises a conv of that shape."""
        fan_in = self.weight[0].numel() // self.out_channels
        for e in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight[e], a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, num_experts={self.num_experts}")

    def out_size(self, size: int) -> int:
        """Spatial output size for an input of `size`."""
        span = self.dilation * (self.kernel_size - 1) + 1
        return (size + 2 * self.padding - span) // self.stride + 1

    def rule_path(self) -> str:
        """The path the fitted rule (`choose_path`) gives this layer, without timing anything."""
        if self.num_experts > 1 and self.padding != 0 and self.kernel_size == 1:
            return "grouped"  # a padded 1x1 conv grows the map: only the conv paths compute it
        return choose_path(self.kernel_size, self.groups, self.num_experts)

    def resolve_path(self, x: torch.Tensor, routing_weights: torch.Tensor | None = None) -> str:
        """The path forward takes for this input: forced, else measured (pathtune), else the rule.

        Without routing weights nothing can be timed: a shape measured before keeps its choice.
        A graph being compiled or traced takes the rule, so it never contains timing code.
        """
        if self.path != "auto":
            return self.path
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self.rule_path()  # a graph holds no timing code: the rule, fixed in it
        return pathtune.tuned_path(self, x, routing_weights, self.rule_path())

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """`x` [B, C, H, W], `routing_weights` [B, E] -> [B, out, H', W']."""
        path = self.resolve_path(x, routing_weights)
        if path == "static":
            return self._static(x, routing_weights)
        if path == "experts":
            return self._experts(x, routing_weights)
        if path == "bmm":
            return self._bmm(x, routing_weights)
        if path == "taps":
            return self._taps(x, routing_weights)
        return self._grouped(x, routing_weights)

    def mixed_kernels(self, routing_weights: torch.Tensor) -> torch.Tensor:
        """Per-example kernels [B, out, in/groups, k, k]: one matmul over the experts."""
        flat = self.weight.reshape(self.num_experts, -1)
        return torch.mm(routing_weights.to(flat.dtype), flat).view(-1, *self.weight.shape[1:])

    def _mixed_bias(self, r: torch.Tensor) -> torch.Tensor | None:
        return None if self.bias is None else torch.mm(r.to(self.bias.dtype), self.bias)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, groups)

    def _static(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        # One expert: conv(x, r*W) = r*conv(x, W), so the kernel never has to be materialised.
        bias = None if self.bias is None else self.bias[0]
        y = F.conv2d(x, self.weight[0], bias, self.stride, self.padding, self.dilation, self.groups)
        return y * r[:, :1, None, None].to(y.dtype)

    def _bmm(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.kernel_size != 1 or self.groups != 1 or self.padding != 0:
            raise ValueError("the bmm path needs a 1x1 conv with groups=1 and no padding")
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        b, c, h, w = x.shape
        kernels = self.mixed_kernels(r).view(b, self.out_channels, c).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # [B, HW, C] @ [B, C, O] keeps the result channels_last without a copy.
            y = torch.bmm(x.permute(0, 2, 3, 1).reshape(b, h * w, c), kernels.transpose(1, 2))
            y = y.view(b, h, w, self.out_channels).permute(0, 3, 1, 2)
        else:
            y = torch.bmm(kernels, x.reshape(b, c, h * w)).view(b, self.out_channels, h, w)
        return self._add_bias(y, r)

    def _grouped(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        kernels = self.mixed_kernels(r).to(x.dtype)
        if torch.jit.is_tracing():  # batch-free in an exported graph
            y = per_example_conv(x, kernels, self.stride, self.padding, self.dilation, self.groups)
            return self._add_bias(y, r)
        b, c, h, w = x.shape
        kernels = kernels.reshape(b * self.out_channels, *self.weight.shape[2:])
        y = self._conv(x.reshape(1, b * c, h, w), kernels, b * self.groups)
        return self._add_bias(y.view(b, self.out_channels, *y.shape[-2:]), r)

    def _taps(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if not (self.groups == self.in_channels == self.out_channels):
            raise ValueError("the taps path needs a depthwise conv (groups = in = out channels)")
        k, s, d = self.kernel_size, self.stride, self.dilation
        kernels = self.mixed_kernels(r).to(x.dtype)  # [B, C, 1, k, k]
        if self.padding:
            x = F.pad(x, [self.padding] * 4)
        oh, ow = (x.shape[-2] - d * (k - 1) - 1) // s + 1, (x.shape[-1] - d * (k - 1) - 1) // s + 1
        y = None
        for u in range(k):
            for v in range(k):
                # Tap (u, v) of every output pixel reads one strided view of the padded input.
                view = x[:, :, u * d : u * d + s * (oh - 1) + 1 : s, v * d : v * d + s * (ow - 1) + 1 : s]
                term = view * kernels[:, :, 0, u, v, None, None]
                y = term if y is None else y + term
        return self._add_bias(y, r)

    def _experts(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        e, o, g = self.num_experts, self.out_channels, self.groups
        # Order output channels (group, expert, out-per-group) so each group's experts see its inputs.
        weight = self.weight.view(e, g, o // g, *self.weight.shape[2:]).transpose(0, 1)
        y = self._conv(x, weight.reshape(e * o, *self.weight.shape[2:]).to(x.dtype), g)
        b, _, h, w = y.shape
        y = y.reshape(b, g, e, o // g * h * w)
        y = torch.einsum("bgep,be->bgp", y, r.to(y.dtype)).reshape(b, o, h, w)
        return self._add_bias(y, r)

    def _add_bias(self, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        bias = self._mixed_bias(r)
        return y if bias is None else y + bias.to(y.dtype)[:, :, None, None]


class Router(nn.Module):
    """Routing function: global average pool -> linear -> sigmoid (or softmax with temperature)."""

    def __init__(self, in_channels: int, num_experts: int, kind: str = "sigmoid",
                 temperature: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in ("sigmoid", "softmax"):
            raise ValueError(f"router kind must be sigmoid or softmax, got {kind!r}")
        self.fc = nn.Linear(in_channels, num_experts)
        self.kind, self.temperature, self.dropout = kind, temperature, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> routing weights [B, E]."""
        logits = self.fc(x.mean((2, 3)))
        if self.kind == "softmax":
            weights = torch.softmax(logits / self.temperature, dim=1)
        else:
            weights = torch.sigmoid(logits)
        return F.dropout(weights, self.dropout, self.training) if self.dropout else weights


def make_activation(name: str) -> nn.Module:
    """Activation module by spec name."""
    table = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU, "hswish": nn.Hardswish}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(table)}")
    return table[name](inplace=True)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: pool -> 1x1 reduce -> act -> 1x1 expand -> sigmoid gate."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class ConvBnAct(nn.Module):
    """Conv (static, or CondConv when experts > 1) -> BatchNorm -> optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1, act: str | None = None, experts: int = 0) -> None:
        super().__init__()
        padding = (kernel - 1) // 2
        if experts > 1:
            self.conv: nn.Module = CondConv2d(in_channels, out_channels, kernel, stride, padding,
                                              groups=groups, num_experts=experts)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding,
                                  groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor, routing: torch.Tensor | None = None) -> torch.Tensor:
        """Routing weights are used by a CondConv and ignored by a static conv."""
        y = self.conv(x, routing) if isinstance(self.conv, CondConv2d) else self.conv(x)
        return self.act(self.bn(y))


def deploy_path(conv: CondConv2d, onnx: bool = False) -> str:
    """The path an exported graph takes: exact, free in the batch size, cheap at batch 1.

    1x1 convs: one batched matmul (at batch 1, one matmul). Others: per-example kernels mixed
    once, then one conv (TorchScript scripts the grouping, see `per_example_conv`). ONNX fixes a
    conv's groups when the graph is built, so there a depthwise conv runs tap by tap (what ONNX
    Runtime ran fastest of the forms free in the batch size, bench/onnx_paths.py) and any other
    k x k conv runs every expert and mixes the outputs.
    """
    if conv.num_experts == 1:
        return "static"
    if conv.kernel_size == 1 and conv.groups == 1 and conv.padding == 0:
        return "bmm"
    if not onnx:
        return "grouped"
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    return "taps" if depthwise else "experts"


def set_deploy_paths(model: nn.Module, onnx: bool = False) -> nn.Module:
    """Fix every CondConv2d of `model` to its deployment path; returns the model."""
    for m in model.modules():
        if isinstance(m, CondConv2d):
            m.path = deploy_path(m, onnx)
    return model
