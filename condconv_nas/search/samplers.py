"""Samplers of a study: multivariate grouped TPE (its split paid once per trial), NSGA-II, random."""

from __future__ import annotations

from typing import Any

import optuna

from ..store.optuna_internals import install_incremental_groups, tpe_split_once
from ..store.quiet import experimental
from .config import SAMPLERS

__all__ = ["SAMPLERS", "SplitOnceTPESampler", "make_sampler"]


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """tpe (multivariate, grouped for the conditional space), nsga2, or random (the control)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r}: must be one of {', '.join(SAMPLERS)}")
    if name == "tpe":
        # Constraints reach the samplers through Trial.set_constraint (Optuna 5).
        with experimental("group"):
            return SplitOnceTPESampler(multivariate=True, group=True, seed=seed,
                                       n_startup_trials=min(10, max(2, trials // 4)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=max(4, min(50, trials // 4)))
    return optuna.samplers.RandomSampler(seed=seed)


class SplitOnceTPESampler(optuna.samplers.TPESampler):
    """TPE with two costs of its grouped mode paid once instead of on every trial and group.

    With `group=True` a conditional space falls into one group per depth-dependent block (seven in
    the quickstart space). TPE repeats the same non-dominated split of the finished trials for
    each group (~40% of its sampling time at trial 200), and re-derives the groups from every
    finished trial on every trial. Here the split is shared by a trial's groups and the groups
    take in each finished trial once. The samples are the same as plain TPE's (a test checks it).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        install_incremental_groups(self)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        """TPE's joint sample, with one non-dominated split shared by the trial's groups."""
        with tpe_split_once():
            return super().sample_relative(study, trial, search_space)
