"""Whether a stored study matches a study file: the settings that change a trained result.

`result_settings` is what a study stores of its file; `settings_differ` and `check_settings`
compare a stored study with it, so results trained differently never mix in one study (storage's
`same_training` asks the same of two sibling studies). Torch- and Optuna-free.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from .config import StudyConfig, StudyError
from .recipe import EXECUTION_FIELDS

if TYPE_CHECKING:
    import optuna

__all__ = ["PRESENCE_KEYS", "check_settings", "result_settings", "settings_differ"]


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
PRESENCE_KEYS = ("holdout",)


def settings_differ(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Keys (recipe fields as recipe.X) whose stored value differs from now; absent ones agree
    (but for PRESENCE_KEYS, where one side's absence is a difference)."""
    out = [k for k in PRESENCE_KEYS if (k in stored) != (k in now)]
    for key, value in stored.items():
        if key not in now:
            continue
        if key == "recipe" and isinstance(value, dict):
            out += [f"recipe.{k}" for k, v in value.items()
                    if k in now[key] and now[key][k] != v and k not in EXECUTION_FIELDS]
        elif now[key] != value:
            out.append(key)
    return out


def check_settings(cfg: StudyConfig, study: optuna.Study, now: dict) -> None:
    """Refuse a study stored under other result settings (legacy studies: their manifest)."""
    attrs = study.user_attrs
    stored = attrs.get("settings")
    if stored is None:  # written before settings were stored: what the manifest recorded
        legacy = attrs.get("config") or {}
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
