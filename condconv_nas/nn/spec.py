"""Architecture specs: frozen dataclasses, validation, JSON round trip and the scaling rules."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..textfile import read_text

__all__ = [
    "ACTIVATIONS",
    "ARCH_FORMAT",
    "ARCH_VERSION",
    "ROUTINGS",
    "ArchSpec",
    "BlockSpec",
    "SpecError",
    "StageSpec",
    "arch_key",
    "check_arch_header",
    "conv_out_size",
    "make_divisible",
    "scale_depth",
    "scale_width",
]

ACTIVATIONS = ("relu", "relu6", "swish", "hswish")
ROUTINGS = ("sigmoid", "softmax")
_KERNELS = (1, 3, 5, 7, 9, 11)


class SpecError(UserError, ValueError):
    """An architecture spec that cannot be built; the message names the field and the reason."""


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% below `value` (EfficientNet)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def scale_width(channels: int, multiplier: float) -> int:
    """Width rule shared by search and baselines: identity at 1.0, else `make_divisible`."""
    # At 1.0 keep the base layout exactly, so hand-written presets with odd widths stay as written.
    return channels if multiplier == 1.0 else make_divisible(channels * multiplier)


def scale_depth(repeats: int, multiplier: float) -> int:
    """Depth rule shared by search and baselines: repeats times multiplier, rounded up."""
    # 1e-9 guards against 3 * 1.1 = 3.3000000000000003 style float noise pushing ceil up.
    return max(1, math.ceil(repeats * multiplier - 1e-9))


def conv_out_size(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Spatial output of a conv with symmetric 'same' padding `(k-1)//2*dilation`."""
    pad = (kernel - 1) // 2 * dilation
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _join(path: str, key: str) -> str:
    """`file.json:` + `stages[0]` -> `file.json: stages[0]`; `spec` + `name` -> `spec.name`."""
    return f"{path} {key}" if path.endswith(":") else f"{path}.{key}"


def _fail(path: str, reason: str) -> None:
    raise SpecError(f"{path.rstrip(':')}: {reason}")


def _check_int(path: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        _fail(path, f"must be {bound}, got {value}")


def _check_float(path: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(path, f"must be a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        _fail(path, f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")


def _check_choice(path: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _fail(path, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks; `experts` gives each block's expert count (last one repeats)."""

    repeats: int
    kernel: int
    stride: int
    expand: float
    out_channels: int
    se_ratio: float = 0.0
    experts: tuple[int, ...] = (0,)

    def experts_at(self, index: int) -> int:
        """Expert count of block `index`; blocks past the list (depth scaling) take the last entry."""
        return self.experts[min(index, len(self.experts) - 1)]

    def validate(self, path: str) -> None:
        """Raise SpecError naming the first invalid field under `path`."""
        _check_int(f"{path}.repeats", self.repeats, 1, 64)
        _check_int(f"{path}.kernel", self.kernel, 1, 11)
        if self.kernel not in _KERNELS:
            _fail(f"{path}.kernel", f"must be odd (1, 3, 5, 7, 9 or 11), got {self.kernel}")
        _check_int(f"{path}.stride", self.stride, 1, 2)
        _check_float(f"{path}.expand", self.expand, 1.0, 16.0)
        _check_int(f"{path}.out_channels", self.out_channels, 1, 16384)
        _check_float(f"{path}.se_ratio", self.se_ratio, 0.0, 1.0)
        if not isinstance(self.experts, tuple) or not self.experts:
            _fail(f"{path}.experts", "must be a non-empty list of integers")
        for i, e in enumerate(self.experts):
            _check_int(f"{path}.experts[{i}]", e, 0, 64)
        if len(self.experts) not in (1, self.repeats):
            _fail(f"{path}.experts", f"needs 1 or repeats={self.repeats} entries, got {len(self.experts)}")


@dataclass(frozen=True)
class BlockSpec:
    """One resolved block: concrete channels after width/depth scaling (what model and cost read)."""

    name: str
    in_channels: int
    mid_channels: int
    out_channels: int
    kernel: int
    stride: int
    se_channels: int
    experts: int
    in_size: int
    out_size: int

    @property
    def has_expand(self) -> bool:
        """Expand ratio 1 has no expand conv (MobileNetV2 / EfficientNet's first block)."""
        return self.mid_channels != self.in_channels

    @property
    def condconv(self) -> bool:
        """Experts 0 or 1 is a static block without router."""
        return self.experts > 1

    @property
    def residual(self) -> bool:
        """Identity shortcut when shapes match."""
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class ArchSpec:
    """An MBConv network: stem, stages, head, input and the width/depth multipliers to apply."""

    stages: tuple[StageSpec, ...]
    name: str = "custom"
    stem_channels: int = 32
    stem_kernel: int = 3
    stem_stride: int = 2
    head_channels: int = 1280
    act: str = "swish"
    input_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout: float = 0.2
    routing: str = "sigmoid"
    routing_temperature: float = 1.0
    routing_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SpecError naming the first invalid field."""
        if not isinstance(self.name, str) or not self.name:
            _fail("name", f"must be a non-empty string, got {self.name!r}")
        if not isinstance(self.stages, tuple) or not self.stages:
            _fail("stages", "must be a non-empty list of stages")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                _fail(f"stages[{i}]", f"must be a stage object, got {type(stage).__name__}")
            stage.validate(f"stages[{i}]")
        _check_int("stem_channels", self.stem_channels, 1, 16384)
        _check_int("stem_kernel", self.stem_kernel, 1, 11)
        if self.stem_kernel not in _KERNELS:
            _fail("stem_kernel", f"must be odd (1, 3, 5, 7, 9 or 11), got {self.stem_kernel}")
        _check_int("stem_stride", self.stem_stride, 1, 2)
        _check_int("head_channels", self.head_channels, 0, 65536)
        _check_choice("act", self.act, ACTIVATIONS)
        _check_int("input_size", self.input_size, 8, 4096)
        _check_int("in_channels", self.in_channels, 1, 64)
        _check_int("num_classes", self.num_classes, 1, 100000)
        _check_float("width_mult", self.width_mult, 0.0, 16.0, low_open=True)
        _check_float("depth_mult", self.depth_mult, 0.0, 16.0, low_open=True)
        _check_float("dropout", self.dropout, 0.0, 0.99)
        _check_choice("routing", self.routing, ROUTINGS)
        _check_float("routing_temperature", self.routing_temperature, 0.0, 1000.0, low_open=True)
        _check_float("routing_dropout", self.routing_dropout, 0.0, 0.99)

    # --- resolution of multipliers -------------------------------------------------------------

    @property
    def stem_width(self) -> int:
        """Stem channels after width scaling."""
        return scale_width(self.stem_channels, self.width_mult)

    @property
    def head_width(self) -> int:
        """Head conv channels after width scaling (0: no head conv)."""
        return scale_width(self.head_channels, self.width_mult) if self.head_channels else 0

    @property
    def stem_size(self) -> int:
        """Spatial size after the stem."""
        return conv_out_size(self.input_size, self.stem_kernel, self.stem_stride)

    @property
    def feature_channels(self) -> int:
        """Channels the classifier sees."""
        return self.head_width or self.blocks()[-1].out_channels

    def blocks(self) -> list[BlockSpec]:
        """Every block with concrete channels, strides and spatial sizes, in network order."""
        blocks: list[BlockSpec] = []
        channels, size = self.stem_width, self.stem_size
        for s, stage in enumerate(self.stages):
            out = scale_width(stage.out_channels, self.width_mult)
            for b in range(scale_depth(stage.repeats, self.depth_mult)):
                stride = stage.stride if b == 0 else 1
                out_size = conv_out_size(size, stage.kernel, stride)
                blocks.append(
                    BlockSpec(
                        name=f"s{s + 1}.b{b + 1}",
                        in_channels=channels,
                        mid_channels=int(round(channels * stage.expand)),
                        out_channels=out,
                        kernel=stage.kernel,
                        stride=stride,
                        se_channels=max(1, int(channels * stage.se_ratio)) if stage.se_ratio else 0,
                        experts=stage.experts_at(b),
                        in_size=size,
                        out_size=out_size,
                    )
                )
                channels, size = out, out_size
        return blocks

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def for_input(self, in_channels: int, input_size: int, num_classes: int) -> ArchSpec:
        """The spec for a dataset's images and classes (itself when they already match)."""
        changes = {k: v for k, v in (("in_channels", in_channels), ("input_size", input_size),
                                     ("num_classes", num_classes)) if getattr(self, k) != v}
        return self.replace(**changes) if changes else self

    # --- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; `from_dict(to_dict())` gives an equal spec."""
        out = dataclasses.asdict(self)
        out["stages"] = [dict(s, experts=list(s["experts"])) for s in out["stages"]]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any, path: str = "spec") -> ArchSpec:
        """Build from a dict, naming unknown keys, missing keys and wrong types."""
        if not isinstance(data, dict):
            _fail(path, f"must be an object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        _reject_unknown(path, data, fields)
        if "stages" not in data:
            _fail(_join(path, "stages"), "is required")
        if not isinstance(data["stages"], list) or not data["stages"]:
            _fail(_join(path, "stages"), "must be a non-empty list of stages")
        stages = tuple(_stage_from_dict(s, _join(path, f"stages[{i}]"))
                       for i, s in enumerate(data["stages"]))
        kwargs = {k: v for k, v in data.items() if k != "stages"}
        for key in ("width_mult", "depth_mult", "dropout", "routing_temperature", "routing_dropout"):
            if isinstance(kwargs.get(key), int) and not isinstance(kwargs.get(key), bool):
                kwargs[key] = float(kwargs[key])
        try:
            return cls(stages=stages, **kwargs)
        except SpecError as err:
            raise SpecError(_join(path, str(err))) from None

    @classmethod
    def from_json(cls, text: str, path: str = "spec") -> ArchSpec:
        """Parse JSON text; malformed JSON is a SpecError too."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data, path)

    @classmethod
    def load(cls, file: str | Path) -> ArchSpec:
        """Read a spec from a JSON file, or the `spec` of an exported arch.json (or its folder)."""
        file = Path(file)
        if file.is_dir():
            file = file / "arch.json"
        text = read_text(file, SpecError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{file}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict) and "format" in data:
            check_arch_header(data, str(file))
            return cls.from_dict(data.get("spec"), f"{file}: spec")
        return cls.from_dict(data, f"{file}:")


ARCH_FORMAT, ARCH_VERSION = "condconv-nas/arch", 1


def check_arch_header(data: dict, source: str) -> None:
    """Raise SpecError unless `data` is an arch.json of the format and version this code reads."""
    if data.get("format") != ARCH_FORMAT:
        raise SpecError(f"{source}: format {data.get('format')!r} is not {ARCH_FORMAT}; "
                        "export one with `condconv-nas export`")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version != ARCH_VERSION:
        raise SpecError(f"{source}: {ARCH_FORMAT} version {version!r} is not supported "
                        f"(this condconv-nas reads version {ARCH_VERSION}); re-export it or "
                        "upgrade condconv-nas")


_STAGE_FIELDS = {f.name: f for f in dataclasses.fields(StageSpec)}


def _reject_unknown(path: str, data: dict, fields: dict) -> None:
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        _fail(_join(path, unknown[0]), f"unknown key (known: {', '.join(fields)})")


def _stage_from_dict(data: Any, path: str) -> StageSpec:
    if not isinstance(data, dict):
        _fail(path, f"must be an object, got {type(data).__name__}")
    _reject_unknown(path, data, _STAGE_FIELDS)
    missing = [k for k, f in _STAGE_FIELDS.items()
               if k not in data and f.default is dataclasses.MISSING]
    if missing:
        _fail(f"{path}.{missing[0]}", "is required")
    kwargs = dict(data)
    experts = kwargs.get("experts", [0])
    if isinstance(experts, list):
        kwargs["experts"] = tuple(experts)
    elif isinstance(experts, int) and not isinstance(experts, bool):
        kwargs["experts"] = (experts,)
    else:
        _fail(f"{path}.experts", f"must be an integer or a list of integers, got {experts!r}")
    for key in ("expand", "se_ratio"):
        if isinstance(kwargs.get(key), int) and not isinstance(kwargs.get(key), bool):
            kwargs[key] = float(kwargs[key])
    stage = StageSpec(**kwargs)
    stage.validate(path)
    return stage



def arch_key(spec: ArchSpec) -> str:
    """Identity of an architecture: the spec without its name (16 hex digits of its SHA-1)."""
    data = spec.to_dict()
    data.pop("name")
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
