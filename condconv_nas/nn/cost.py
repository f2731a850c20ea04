"""MAdds and params of an ArchSpec: an analytic per-layer count and a ptflops cross-check.

Convention (the unit of the CondConv and EfficientNet papers):
- MAdds are the multiply-accumulates of one image at inference (batch 1).
- Counted: conv and linear layers (a bias adds one per output element), squeeze-excite, every
  global average pool (one accumulate per input element), and for each CondConv block its routing
  function (pool + linear) and its kernel mixing (experts x kernel parameters of each CondConv).
- Not counted: BatchNorm (folded into the conv at inference), activations, element-wise adds and
  products (residuals, SE gates).
- Params are all trainable parameters, every expert and BatchNorm's scale and shift included.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from .spec import ArchSpec, BlockSpec

__all__ = ["CONVENTION", "Cost", "LayerCost", "count_cost", "ptflops_cost"]

CONVENTION = ("MAdds: multiply-accumulates per image at inference (batch 1); conv, linear, SE, "
              "pooling, CondConv routing and kernel mixing counted; BatchNorm folded; activations "
              "and element-wise ops not counted. Params: all trainable parameters.")


@dataclass(frozen=True)
class LayerCost:
    """MAdds and params of one layer."""

    name: str
    kind: str
    madds: int
    params: int


@dataclass(frozen=True)
class Cost:
    """Totals and the per-layer breakdown."""

    madds: int
    params: int
    layers: tuple[LayerCost, ...]

    def to_dict(self, per_layer: bool = False) -> dict:
        """JSON-ready dict; `layers` only when asked."""
        out: dict = {"madds": self.madds, "params": self.params}
        if per_layer:
            out["layers"] = [asdict(layer) for layer in self.layers]
        return out


def _conv(name: str, cin: int, cout: int, k: int, groups: int, out_size: int,
          experts: int = 0, bn: bool = True) -> list[LayerCost]:
    weight = cout * (cin // groups) * k * k
    copies = max(experts, 1)
    layers = [LayerCost(name, "condconv" if experts > 1 else "conv",
                        out_size * out_size * weight, copies * weight + (2 * cout if bn else 0))]
    if experts > 1:
        layers.append(LayerCost(f"{name}.mix", "mixing", experts * weight, 0))
    return layers


def _pool(name: str, channels: int, size: int) -> LayerCost:
    return LayerCost(name, "pool", channels * size * size, 0)


def _linear(name: str, cin: int, cout: int) -> LayerCost:
    return LayerCost(name, "linear", cin * cout + cout, cin * cout + cout)


def _block(b: BlockSpec) -> list[LayerCost]:
    e = b.experts if b.condconv else 0
    layers: list[LayerCost] = []
    if b.condconv:
        layers += [_pool(f"{b.name}.router.pool", b.in_channels, b.in_size),
                   _linear(f"{b.name}.router", b.in_channels, b.experts)]
    if b.has_expand:
        layers += _conv(f"{b.name}.expand", b.in_channels, b.mid_channels, 1, 1, b.in_size, e)
    layers += _conv(f"{b.name}.dw", b.mid_channels, b.mid_channels, b.kernel, b.mid_channels,
                    b.out_size, e)
    if b.se_channels:
        layers += [_pool(f"{b.name}.se.pool", b.mid_channels, b.out_size),
                   _linear(f"{b.name}.se.reduce", b.mid_channels, b.se_channels),
                   _linear(f"{b.name}.se.expand", b.se_channels, b.mid_channels)]
    layers += _conv(f"{b.name}.project", b.mid_channels, b.out_channels, 1, 1, b.out_size, e)
    return layers


def count_cost(spec: ArchSpec) -> Cost:
    """Analytic MAdds and params of `spec`, per layer, under the module's convention."""
    layers = _conv("stem", spec.in_channels, spec.stem_width, spec.stem_kernel, 1, spec.stem_size)
    blocks = spec.blocks()
    for b in blocks:
        layers += _block(b)
    size = blocks[-1].out_size
    if spec.head_width:
        layers += _conv("head", blocks[-1].out_channels, spec.head_width, 1, 1, size)
    layers += [_pool("pool", spec.feature_channels, size),
               _linear("classifier", spec.feature_channels, spec.num_classes)]
    return Cost(sum(x.madds for x in layers), sum(x.params for x in layers), tuple(layers))


@contextlib.contextmanager
def _deploy_paths(model, onnx: bool = False) -> Iterator[None]:
    """Count CondConvs on the paths an exported graph takes (layers.deploy_path), then restore."""
    from .layers import CondConv2d, deploy_path

    convs = [m for m in model.modules() if isinstance(m, CondConv2d)]
    saved = [m.path for m in convs]
    for m in convs:
        m.path = deploy_path(m, onnx)
    try:
        yield
    finally:
        for m, path in zip(convs, saved):
            m.path = path


def ptflops_cost(spec: ArchSpec, onnx: bool = False) -> tuple[int, int]:
    """(MAdds, params) of the built model counted by ptflops' aten backend, which sees F.conv2d.

    CondConvs run their deployment paths: the TorchScript export's by default, the ONNX
    export's with `onnx` (whose tap-by-tap depthwise convs are element-wise work ptflops skips).
    """
    import torch
    from ptflops import get_model_complexity_info
    from ptflops.flops_counter import FLOPS_BACKEND

    from .model import build_model

    def pool_hook(inputs, outputs) -> int:  # aten.mean over H, W: one accumulate per element
        return inputs[0].numel()

    model = build_model(spec).eval()
    with _deploy_paths(model, onnx), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()) as log:
        macs, params = get_model_complexity_info(
            model, (spec.in_channels, spec.input_size, spec.input_size),
            as_strings=False, print_per_layer_stat=False, backend=FLOPS_BACKEND.ATEN,
            custom_modules_hooks={torch.ops.aten.mean: pool_hook},
        )
    if macs is None:  # ptflops prints the exception and returns None
        raise RuntimeError(f"ptflops could not count {spec.name}: {log.getvalue().strip()[-300:]}")
    return int(macs), int(params)

