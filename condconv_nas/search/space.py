"""Search spaces from YAML: what may vary around a base preset, and `sample(trial) -> ArchSpec`.

A space file::

    base: mobilenet_v2_proxy28       # a preset name (condconv-nas presets)
    budget_madds: 8M                 # integer, or with a K/M/G suffix
    resolution: [24, 28]             # optional: input sizes to choose from
    stages:                          # the stages that vary, numbered from 1 as in `cost --per-layer`
      - stage: 5
        experts: [0, 4, 8]           # per block; 0 or 1 is a static block
        width: [0.75, 1.0, 1.5]      # multiplier of the base stage's channels
        depth: [1, 3]                # repeats, an inclusive range

Torch-free: the tests of this module run in milliseconds.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import textfile
from ..errors import UserError
from ..nn.presets import get_preset
from ..nn.spec import ArchSpec, SpecError, scale_width

__all__ = ["PARAMETER_MEANINGS", "SearchSpace", "SpaceError", "StageChoice", "TrialLike",
           "load_space", "parse_count", "read_yaml"]

# What each parameter a space suggests means, by name pattern (stored with every search study,
# so that Optuna's own tools and the dashboard need no README to read a trial's parameters).
PARAMETER_MEANINGS = {
    "s<N>_depth": "blocks (repeats) in stage N",
    "s<N>_width": "multiplier of stage N's channels (1.0: the base network's)",
    "s<N>_b<M>_experts": "experts of the CondConv in block M of stage N; 0: a static convolution",
    "resolution": "input image size in pixels",
}


class SpaceError(UserError, ValueError):
    """A space (or study) file that cannot be used; the message names file, key and reason."""


class TrialLike(Protocol):
    """The part of optuna.Trial that sampling needs (FixedTrial and tests provide it too)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        """One of `choices` for the parameter `name`."""

    def suggest_int(self, name: str, low: int, high: int) -> int:
        """An integer in [low, high] for the parameter `name`."""


@dataclass(frozen=True)
class StageChoice:
    """What may vary in one stage (1-based `stage` index into the base preset)."""

    stage: int
    experts: tuple[int, ...] | None = None
    width: tuple[float, ...] | None = None
    depth: tuple[int, int] | None = None


@dataclass(frozen=True)
class SearchSpace:
    """A base spec and the choices around it."""

    base: ArchSpec
    budget_madds: int
    stages: tuple[StageChoice, ...]
    resolution: tuple[int, ...] | None = None
    source: str = "<space>"

    def sample(self, trial: TrialLike) -> ArchSpec:
        """The architecture a trial picks; the only code that calls `trial.suggest_*`."""
        spec = self.base
        stages = list(spec.stages)
        for choice in self.stages:
            i = choice.stage - 1
            stage = stages[i]
            label = f"s{choice.stage}"
            repeats = (trial.suggest_int(f"{label}_depth", *choice.depth) if choice.depth
                       else stage.repeats)
            out = stage.out_channels
            if choice.width:
                out = scale_width(out, float(trial.suggest_categorical(f"{label}_width",
                                                                       list(choice.width))))
            experts = stage.experts
            if choice.experts:
                # Only blocks that exist ask: a shallower stage never suggests its missing blocks.
                experts = tuple(int(trial.suggest_categorical(f"{label}_b{b + 1}_experts",
                                                              list(choice.experts)))
                                for b in range(repeats))
            elif len(experts) not in (1, repeats):
                experts = tuple(stage.experts_at(b) for b in range(repeats))
            stages[i] = dataclasses.replace(stage, repeats=repeats, out_channels=out,
                                            experts=experts)
        changes: dict[str, Any] = {"stages": tuple(stages), "name": f"{spec.name}-sampled"}
        if self.resolution:
            changes["input_size"] = int(trial.suggest_categorical("resolution",
                                                                  list(self.resolution)))
        return spec.replace(**changes)

    def for_data(self, spec: ArchSpec, in_channels: int, size: int,
                 num_classes: int) -> ArchSpec:
        """`spec` fitted to a dataset: its channels and classes, and its image size unless the
        space searches resolution."""
        return spec.for_input(in_channels, spec.input_size if self.resolution else size,
                              num_classes)

    def extremes(self) -> tuple[ArchSpec, ArchSpec]:
        """The cheapest and the costliest architecture of the space (before fitting to data)."""
        # Every choice (depth, width, experts, resolution) costs more MAdds as it grows.
        return self.sample(_Extreme(min)), self.sample(_Extreme(max))

    def describe(self) -> dict[str, str]:
        """The meaning of each kind of parameter this space suggests (PARAMETER_MEANINGS)."""
        used = {"s<N>_depth": any(c.depth for c in self.stages),
                "s<N>_width": any(c.width for c in self.stages),
                "s<N>_b<M>_experts": any(c.experts for c in self.stages),
                "resolution": bool(self.resolution)}
        return {k: v for k, v in PARAMETER_MEANINGS.items() if used[k]}

    def labels(self) -> list[str]:
        """Every parameter label the space can suggest (deepest choice of every stage)."""
        out = []
        for c in self.stages:
            if c.depth:
                out.append(f"s{c.stage}_depth")
            if c.width:
                out.append(f"s{c.stage}_width")
            if c.experts:
                deepest = c.depth[1] if c.depth else self.base.stages[c.stage - 1].repeats
                out += [f"s{c.stage}_b{b + 1}_experts" for b in range(deepest)]
        return out + (["resolution"] if self.resolution else [])


class _Extreme:
    """A trial that takes the smallest (`min`) or largest (`max`) choice everywhere."""

    def __init__(self, pick: Any) -> None:
        self.pick = pick

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return int(self.pick(low, high))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.pick(choices)


_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_count(value: Any) -> int | None:
    """12000000, 12e6, '12M', '1.5G' -> an integer count; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGbB]?)\s*", value)
        if m:
            number = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
            return int(number) if number.is_integer() else None
    return None


_SPACE_KEYS = {"base", "budget_madds", "resolution", "stages"}
_STAGE_KEYS = {"stage", "experts", "width", "depth"}


def _err(source: str, key: str, reason: str) -> SpaceError:
    return SpaceError(f"{source}: {key}: {reason}")


def _list(source: str, key: str, value: Any) -> list:
    if not isinstance(value, list):
        raise _err(source, key, f"must be a list, got {type(value).__name__}")
    if not value:
        raise _err(source, key, "is an empty list; give at least one choice")
    # 1 and 1.0 are one choice; unhashable values (a list, a mapping) compare by their text.
    keys = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)
            for v in value]
    if len(set(keys)) != len(keys):
        raise _err(source, key, "has repeated choices")
    return value


def space_from_dict(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate a parsed space file; every error names the key and the reason."""
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: must be a mapping with keys {', '.join(sorted(_SPACE_KEYS))}")
    unknown = sorted(set(data) - _SPACE_KEYS, key=str)
    if unknown:
        raise _err(source, unknown[0], f"unknown key (known: {', '.join(sorted(_SPACE_KEYS))})")
    for key in ("base", "budget_madds", "stages"):
        if key not in data:
            raise _err(source, key, "is required")
    if not isinstance(data["base"], str):
        raise _err(source, "base", f"must be a preset name, got {data['base']!r}")
    try:
        base = get_preset(data["base"])
    except SpecError as err:
        raise _err(source, "base", str(err)) from None
    budget = parse_count(data["budget_madds"])
    if budget is None or budget <= 0:
        raise _err(source, "budget_madds", f"must be a positive count like 8000000 or 8M, "
                   f"got {data['budget_madds']!r}")
    resolution = None
    if "resolution" in data and data["resolution"] is not None:
        values = _list(source, "resolution", data["resolution"])
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or not 8 <= v <= 4096:
                raise _err(source, "resolution", f"choices must be integers in 8..4096, got {v!r}")
        resolution = tuple(values)
    stages = tuple(_stage_choice(source, base, i, s)
                   for i, s in enumerate(_list(source, "stages", data["stages"])))
    seen = [c.stage for c in stages]
    if len(set(seen)) != len(seen):
        raise _err(source, "stages", f"stage numbers repeat: {seen}")
    return SearchSpace(base=base, budget_madds=budget, stages=stages, resolution=resolution,
                       source=source)


def _stage_choice(source: str, base: ArchSpec, index: int, data: Any) -> StageChoice:
    where = f"stages[{index}]"
    if not isinstance(data, dict):
        raise _err(source, where, f"must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _STAGE_KEYS, key=str)
    if unknown:
        raise _err(source, f"{where}.{unknown[0]}",
                   f"unknown key (known: {', '.join(sorted(_STAGE_KEYS))})")
    stage = data.get("stage")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= len(base.stages):
        raise _err(source, f"{where}.stage", f"must be a stage number 1..{len(base.stages)} of "
                   f"{base.name}, got {stage!r}")
    if not set(data) & {"experts", "width", "depth"}:
        raise _err(source, where, "names no choice; give experts, width or depth")
    experts = width = depth = None
    if "experts" in data:
        experts = tuple(_list(source, f"{where}.experts", data["experts"]))
        for e in experts:
            if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e <= 64:
                raise _err(source, f"{where}.experts", f"choices must be integers 0..64, got {e!r}")
    if "width" in data:
        width = tuple(_list(source, f"{where}.width", data["width"]))
        for w in width:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 16:
                raise _err(source, f"{where}.width", f"choices must be numbers in (0, 16], got {w!r}")
    if "depth" in data:
        d = data["depth"]
        if (not isinstance(d, list) or len(d) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in d)):
            raise _err(source, f"{where}.depth", f"must be a range [min, max] of integers, got {d!r}")
        if not 1 <= d[0] <= d[1] <= 64:
            raise _err(source, f"{where}.depth", f"needs 1 <= min <= max <= 64, got {d}")
        depth = (d[0], d[1])
    return StageChoice(stage=stage, experts=experts, width=width, depth=depth)


def read_yaml(path: str | Path, error: type[Exception] = SpaceError) -> Any:
    """Parse a YAML file strictly (textfile.read_yaml); errors raise `error` (SpaceError)."""
    return textfile.read_yaml(path, error)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space YAML file."""
    return space_from_dict(read_yaml(path), str(path))

