"""Stored settings compared: which fields differ, whether two studies train alike, their shared runs.

A study stores the settings that change a trained result (search/match.py writes them and holds
a study file against them). Here two stored dicts are compared: `settings_differ` names the fields
that differ (execution fields never count), `same_training` asks it of two sibling studies, and
`sibling_runs` yields the runs a trial may reuse because they trained alike. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from ..train.recipe import EXECUTION_FIELDS
from .attrs import whole
from .optuna_internals import storage_of
from .record import TrialRecord
from .siblings import study_root

__all__ = ["PRESENCE_KEYS", "same_training", "settings_differ", "sibling_runs"]


PRESENCE_KEYS = ("holdout", "image_size")  # stored only when set: absence is a value too


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


def same_training(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two studies' stored settings train a given architecture, seed index, epochs and
    image count to the same result: data, splits, seed, recipe (but its epochs) and measurement."""
    keys = ("dataset", "data_dir", "val_size", "train_limit", "seed", "measure", "recipe",
            "holdout", "image_size")
    # Each run's epochs are compared with the run; execution fields never count (settings_differ).
    return all(d == "recipe.epochs" for d in settings_differ({k: a[k] for k in keys if k in a}, b))


def sibling_runs(study: optuna.Study, include_self: bool = False
                 ) -> Iterator[tuple[str, optuna.trial.FrozenTrial, TrialRecord, int]]:
    """Trained runs of the study's siblings (X, X.baseline, X.confirm, X.calibrate, X.random)
    stored under the same training settings: (study, trial, record, epochs it trained).

    Only original runs, trained to the end: not over budget, not reused or copied, not pruned.
    """
    ours = whole(study.user_attrs, "settings")
    if ours is None:
        return
    storage, root = storage_of(study), study_root(study.study_name)
    # get_all_studies, not Optuna's study summaries: those deep-copy every study's trials, which
    # cost a search 5% of its trial time by trial 100 (bench/search_overhead.py).
    for summary in storage.get_all_studies():
        name = summary.study_name
        if study_root(name) != root or (name == study.study_name and not include_self):
            continue
        other = study if name == study.study_name else optuna.load_study(study_name=name,
                                                                           storage=storage)
        theirs = whole(other.user_attrs, "settings")
        if theirs is None or not same_training(theirs, ours):
            continue
        recipe_epochs = (theirs.get("recipe") or {}).get("epochs")
        for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            r = TrialRecord.of(t.user_attrs)
            epochs = r.epochs or recipe_epochs
            if (not r.infeasible and r.reused_from is None and not r.copied_from
                    and r.epochs_run == epochs):
                yield name, t, r, epochs
