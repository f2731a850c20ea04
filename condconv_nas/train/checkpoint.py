"""Epoch checkpoints: a training run stopped mid-way goes on from its last finished epoch.

A study run is fixed by its architecture, seed, budget and recipe, and training is seeded, so
any run with the same key passes through the same states: the checkpoint one attempt left is the
state a fresh attempt would reach, and a retried trial (a new trial number after a SIGKILL,
Ctrl-C or session stop) may start from it. Files are written whole (temporary file, then
rename), so a kill mid-write leaves the previous epoch's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["checkpoint_path", "load_checkpoint", "remove_checkpoint", "save_checkpoint"]


def checkpoint_path(folder: str | Path, **key: Any) -> Path:
    """The checkpoint file of the run identified by `key` (JSON-able values) under `folder`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(folder) / "checkpoints" / f"{digest[:32]}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | None) -> dict[str, Any] | None:
    """The stored state, or None when there is none or it cannot be read (then train afresh)."""
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a file from another torch version or a damaged disk: not worth a failure
        return None


def remove_checkpoint(path: Path | None) -> None:
    """Delete the checkpoint of a finished run (missing is fine: another worker finished it)."""
    if path is not None:
        path.unlink(missing_ok=True)
