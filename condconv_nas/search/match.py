"""Whether a stored study matches a study file: the one home of that question.

`result_settings` is what a study stores of its file (the settings that change a trained
result) and `manifest` what a reader needs to know of how it ran; `check_settings` refuses to
resume a study stored under other settings, so results trained differently never mix in one
study; `adopt_stored_layout` keeps a study stored before holdout splits on its own split layout.
The field-by-field comparison is store/settings.py's. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StudyError
from ..store.attrs import whole
from ..store.settings import settings_differ
from ..store.siblings import study_root
from ..store.storage import StorageError, open_storage

if TYPE_CHECKING:
    import optuna

    from .config import StudyConfig

__all__ = ["adopt_stored_layout", "check_settings", "manifest", "result_settings"]


def result_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The settings that change a trained result, as stored with the study (JSON-safe).

    Resuming, confirming or training baselines under other values would mix results trained
    differently in one study; `storage`, `workers`, `trials`, `sampler` and `device` may change.
    """
    space = cfg.space
    # A study stored before holdout splits existed has no holdout key: its layout stays as it was.
    holdout = ({} if cfg.holdout is None else
               {"holdout": {"split": cfg.holdout, "size": cfg.holdout_size}})
    return json.loads(json.dumps({
        **holdout, "dataset": cfg.dataset, "data_dir": cfg.data_dir, "val_size": cfg.val_size,
        "train_limit": cfg.train_limit, "recipe": dataclasses.asdict(cfg.recipe),
        # Only when set: a study stored before the key existed keeps matching its file.
        **({"image_size": cfg.image_size} if cfg.image_size else {}),
        "seed": cfg.seed, "budget_madds": cfg.budget_madds,
        # What the sampler learns from steers sampling, as the sampler does, not a result.
        "multifidelity": ({k: v for k, v in dataclasses.asdict(cfg.multifidelity).items()
                           if k != "learn_from"} if cfg.multifidelity else None),
        "objective": cfg.objective,
        "measure": dataclasses.asdict(cfg.measure) if cfg.measure else None,
        "space": {"base": space.base.to_dict(), "budget_madds": space.budget_madds,
                  "stages": [dataclasses.asdict(c) for c in space.stages],
                  "resolution": space.resolution}}))


# Keys whose absence means something: a study without `holdout` trained on a layout without one.


def manifest(cfg: StudyConfig) -> dict[str, Any]:
    """What a reader of the study needs to know about how it ran (JSON-safe)."""
    return {"study_file": cfg.path, "space": cfg.space.source, "base": cfg.space.base.name,
            "dataset": cfg.dataset, "train_limit": cfg.train_limit, "val_size": cfg.val_size,
            "split_seed": cfg.seed, "seed": cfg.seed, "sampler": cfg.sampler,
            "budget_madds": cfg.budget_madds, "recipe": dataclasses.asdict(cfg.recipe),
            "trials": cfg.trials, "pruner": dataclasses.asdict(cfg.pruner) if cfg.pruner else None,
            "baselines": dataclasses.asdict(cfg.baselines), "artifacts": cfg.artifacts,
            "multifidelity": ({**dataclasses.asdict(cfg.multifidelity),
                               "rungs": list(cfg.multifidelity.rungs)}
                              if cfg.multifidelity else None),
            "measure": dataclasses.asdict(cfg.measure) if cfg.measure else None,
            "objective": cfg.objective,
            "holdout": (None if cfg.holdout is None else
                        {"split": cfg.holdout, "size": cfg.holdout_size})}


def check_settings(cfg: StudyConfig, study: optuna.Study, now: dict) -> None:
    """Refuse a study stored under other result settings (legacy studies: their manifest)."""
    attrs = study.user_attrs
    stored = whole(attrs, "settings")
    if stored is None:  # written before settings were stored: what the manifest recorded
        legacy = whole(attrs, "config") or {}
        stored = {k: legacy[k] for k in ("dataset", "val_size", "train_limit", "seed",
                                         "budget_madds", "recipe") if k in legacy}
    differ = settings_differ(stored, now)
    if differ:
        first = differ[0]
        if first.startswith("recipe."):
            where, old, new = first, stored["recipe"].get(first[7:]), now["recipe"].get(first[7:])
        else:  # the innermost difference: a whole space is kilobytes on one line
            where, old, new = _first_difference(first, stored.get(first, _ABSENT),
                                                now.get(first, _ABSENT))
        raise StudyError(f"{cfg.path}: study {study.study_name} was trained with other settings "
                         f"({', '.join(differ)} differ; {where}: stored {_short(old)}, now "
                         f"{_short(new)}); restore them, or give the study a new name to train "
                         "under these")


def adopt_stored_layout(cfg: StudyConfig) -> StudyConfig:
    """The config with the split layout its stored studies have: one stored before holdout splits
    existed keeps its layout (no holdout), so resuming it trains on the images it trained on."""
    if cfg.holdout is None or "://" not in cfg.storage and not Path(cfg.storage).exists():
        return cfg
    try:
        storage = open_storage(cfg.storage, create=False, heartbeat=cfg.heartbeat)
    except StorageError:
        return cfg  # reported by whoever opens it for real
    root = study_root(cfg.name)
    for summary in storage.get_all_studies():
        settings = whole(summary.user_attrs, "settings")
        if study_root(summary.study_name) == root and (settings is None or "holdout" not in settings):
            return dataclasses.replace(cfg, holdout=None, holdout_size=None)
    return cfg


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _first_difference(where: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """The path (a.b[2].c) of the first place two JSON-like values differ, and the two values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old or key not in new:
                return f"{where}.{key}", old.get(key, _ABSENT), new.get(key, _ABSENT)
            if old[key] != new[key]:
                return _first_difference(f"{where}.{key}", old[key], new[key])
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b and isinstance(a, (dict, list)):  # a list of choices is shown whole
                return _first_difference(f"{where}[{i}]", a, b)
    return where, old, new


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
