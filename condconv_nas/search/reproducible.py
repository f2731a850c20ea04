"""A reproducible parallel search: trial n is decided by (seed, n) and the results of trials 0..n-lag.

Optuna's samplers read whatever trials have finished when they sample, so with several workers
the trials depend on which finished first (Optuna issue #6062). Here every sampled trial takes a
*slot*, its position in the search, under the claim lock. The sampler of slot n is built afresh
from a seed drawn from (study seed, n) and sees only the finished trials of slots 0..n-lag
(`default_lag`: 1 for one worker, else twice the study's worker count; stored with the study),
renumbered by slot; the claim waits until those are stored. The pruner, duplicate reuse and
multi-fidelity promotions read the same trials, so no decision depends on timing. A retry
carries its slot and so sees what it saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from ..store.attrs import set_study_attr
from ..store.order import ORDER_ATTR, SearchOrder, stored_order
from ..store.record import TrialRecord

__all__ = ["ReproducibleSampler", "StudyView", "ViewSampler", "default_lag", "next_slot",
           "settle_order", "slot_seed", "slot_trials"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def settle_order(study: optuna.Study, reproducible: bool, workers: int, storage: str,
                 print_fn: Callable[[str], None] = print) -> SearchOrder:
    """The order this run follows, stored with a new study: a study keeps the order it began
    with, but for an opt-out (`reproducible: false`), which holds from then on."""
    stored = stored_order(study)
    if stored is None or (stored.reproducible and not reproducible):
        if stored is not None:
            print_fn(f"study {study.study_name}: reproducible: false from here on; the trials "
                     "already stored stay as they were")
        stored = SearchOrder(reproducible, lag=default_lag(workers))
        set_study_attr(study, ORDER_ATTR, stored.to_dict())
    elif reproducible and not stored.reproducible:
        print_fn(f"study {study.study_name}: {stored.describe()}; it goes on as it began")
    if stored.reproducible and "://" in storage and not storage.startswith(
            ("sqlite:///", "postgresql")):
        raise UserError(f"study {study.study_name}: a reproducible search needs a storage whose "
                        f"claims hold a lock (a journal file, SQLite or PostgreSQL), not "
                        f"{storage.split(':', 1)[0]}; set reproducible: false in the study file")
    return stored


def default_lag(workers: int) -> int:
    """Slots between a trial and the latest result its sampler reads: 1 for one worker (it
    waits for nothing), else twice the workers.

    With lag W the worker that finishes first waits whenever its partner's trial runs longer
    (20.8% of worker time at 2 workers on the quickstart, `bench/reproducible.py`); with 2W it
    waits only when the others finish 2W-1 trials during one of its own.
    """
    return 1 if workers <= 1 else 2 * workers


def slot_seed(seed: int, slot: int) -> int:
    """The sampler seed of slot `slot`: independent streams from (study seed, slot)."""
    return int(np.random.SeedSequence([seed % 2**32, slot]).generate_state(1)[0])


def next_slot(trials: Sequence[FrozenTrial]) -> int:
    """The slot the next sampled trial takes: one past the highest taken (retries keep theirs)."""
    taken = [r.slot for t in trials if (r := TrialRecord.of(t.user_attrs)).slot is not None]
    return max(taken, default=-1) + 1


def slot_trials(trials: Sequence[FrozenTrial], upto: int) -> list[FrozenTrial] | None:
    """The final attempt of every slot 0..upto in slot order, or None while one is unfinished.

    A slot's final attempt is its trial that is not stale (a dead or interrupted attempt is; its
    retry carries the slot). A slot whose attempts are all stale is queued again: unfinished.
    """
    if upto < 0:
        return []
    by_slot: dict[int, FrozenTrial] = {}
    for t in trials:
        r = TrialRecord.of(t.user_attrs)
        if r.slot is not None and r.slot <= upto and not r.stale:
            by_slot[r.slot] = t
    if len(by_slot) <= upto or any(by_slot[s].state not in FINISHED for s in range(upto + 1)):
        return None
    return [by_slot[s] for s in range(upto + 1)]


class StudyView(optuna.Study):
    """The study as it stood for one slot: its trials are a fixed list (the finished earlier slots).

    Everything else (storage, directions, attributes) is the real study's. With `renumber` the
    trials are copies numbered 0..k-1 by slot, as samplers that index trials by number expect.
    """

    def __init__(self, study: optuna.Study, trials: Sequence[FrozenTrial],
                 renumber: bool = False) -> None:  # noqa: D107 (no Study.__init__: no storage calls)
        self.__dict__.update(study.__dict__)
        if renumber:
            copies = []
            for i, t in enumerate(trials):
                c = FrozenTrial.__new__(FrozenTrial)
                c.__dict__.update(t.__dict__)
                c.number = i
                copies.append(c)
            trials = copies
        self._view = list(trials)

    def _get_trials(self, deepcopy: bool = True, states: Any = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        import copy

        out = [t for t in self._view if states is None or t.state in states]
        return copy.deepcopy(out) if deepcopy else out


class ViewSampler(optuna.samplers.BaseSampler):
    """An inner sampler that samples from a bound view of the study's trials, not the study's."""

    def __init__(self, inner: optuna.samplers.BaseSampler | None = None) -> None:
        self._inner = inner
        self._view: StudyView | None = None

    def bind(self, study: optuna.Study, seen: Sequence[FrozenTrial]) -> None:
        """Sample the next asked trial from the trials `seen` (renumbered 0..k-1)."""
        self._view = StudyView(study, seen, renumber=True)

    def _bound(self) -> tuple[optuna.samplers.BaseSampler, StudyView]:
        if self._inner is None or self._view is None:
            raise RuntimeError("a trial was asked for without binding the sampler's view")
        return self._inner, self._view

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """The inner sampler's, on the view."""
        inner, view = self._bound()
        return inner.infer_relative_search_space(view, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """The inner sampler's, on the view."""
        inner, view = self._bound()
        return inner.sample_relative(view, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The inner sampler's, on the view."""
        inner, view = self._bound()
        return inner.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """The inner sampler's, on the view (NSGA-II assigns the generation here)."""
        inner, view = self._bound()
        inner.before_trial(view, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """The inner sampler's, if one is bound (the trial told is the one it sampled)."""
        if self._inner is not None:
            self._inner.after_trial(study, trial, state, values)


class ReproducibleSampler(ViewSampler):
    """A fresh inner sampler per slot, seeded by (seed, slot), that sees only the slot's view."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        super().__init__()
        self._make, self._seed = make, seed

    def bind_slot(self, study: optuna.Study, slot: int, seen: Sequence[FrozenTrial]) -> None:
        """Sample the next asked trial as slot `slot`, from the finished trials `seen`."""
        self._inner = self._make(slot_seed(self._seed, slot))
        self.bind(study, seen)
