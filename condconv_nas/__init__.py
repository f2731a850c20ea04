"""condconv-nas: where do CondConv layers buy more accuracy per MAdd than width or depth?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .api import Results, Study
from .errors import UserError
from .nn.cost import count_cost
from .nn.presets import get_preset, preset_names
from .nn.spec import ArchSpec, SpecError, StageSpec

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

__all__ = ["ArchSpec", "Results", "SpecError", "StageSpec", "Study", "UserError", "__version__",
           "build_model", "count_cost", "get_preset", "load_arch", "preset_names"]


def build_model(spec: ArchSpec) -> nn.Module:
    """The torch model of `spec` (imports torch on first use, so the core stays light)."""
    from .nn.model import build_model as _build

    return _build(spec)


def load_arch(path: str | Path, weights: bool = True) -> nn.Module:
    """Rebuild an exported model from its arch.json (or folder); eval mode, weights loaded."""
    from .export import load_arch as _load

    return _load(path, weights=weights)
