"""Every use of Optuna's private members, in one place so an Optuna upgrade touches one file.

Checked against Optuna 5.0.0 (the version `pyproject.toml` admits: >=5.0,<6). What is used, and
why no public API does it:

- `Study._storage`, `Trial._trial_id`, `FrozenTrial._trial_id`: writing to a trial that is not
  the one in hand (a dead worker's, a heartbeat retry, a claim past the budget) and recording a
  heartbeat at claim time. Optuna exposes these only through `Study.tell` on the trial in hand.
- `Trial._cached_frozen_trial`, with `storage.set_trial_param`: giving a queued run (a baseline,
  a confirmation, a control) its family, multiplier and seed as parameters with the distributions
  the run's record implies. `Trial.suggest_*` would sample a value wherever the queue holds none
  (runs queued before they had parameters).
- `optuna.storages._heartbeat.BaseHeartbeat`: whether a storage keeps heartbeats.
- `optuna.storages.journal._file.get_lock_file`: the journal's own file lock, for appends
  without an fsync per write (see `unsynced_journal_backend`).
- `optuna.samplers._tpe.sampler._split_trials`, `TPESampler._group_decomposed_search_space`,
  its `_search_space` and `_include_pruned`, and `Study._get_trials(use_cache=...)`: sharing one
  non-dominated split between the groups of a grouped TPE trial, and folding each finished trial
  into the groups once (`samplers.SplitOnceTPESampler`).

Where a later Optuna has reorganised a member, the helpers fall back to plain behaviour
(`tpe_split_once` runs unpatched) or fail loudly (`trial_id`), never silently wrong.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = ["IncrementalGroups", "frozen", "heartbeat_enabled",
           "install_incremental_groups", "record_heartbeat", "set_trial_attrs", "set_trial_params",
           "set_trial_state",
           "storage_of", "tpe_split_once", "trial_id", "unsynced_journal_backend"]

def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object behind a study."""
    return study._storage


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def set_trial_attrs(study: optuna.Study, trial: Any, attrs: dict[str, Any]) -> None:
    """Set user attributes of any unfinished trial of the study, not only the one in hand."""
    storage, tid = storage_of(study), trial_id(trial)
    for key, value in attrs.items():
        storage.set_trial_user_attr(tid, key, value)


def set_trial_params(trial: optuna.Trial, params: dict[str, tuple[Any, Any]]) -> None:
    """Store parameters (name: (value, distribution)) on the running trial in hand, as
    `suggest_*` would without sampling anything."""
    cached = trial._cached_frozen_trial
    for name, (value, distribution) in params.items():
        trial.storage.set_trial_param(trial_id(trial), name, distribution.to_internal_repr(value),
                                      distribution)
        cached.distributions[name] = distribution  # as Trial._suggest keeps its copy
        cached.params[name] = value


def set_trial_state(study: optuna.Study, trial: Any, state: TrialState) -> None:
    """Finish any trial of the study in `state` (no values)."""
    storage_of(study).set_trial_state_values(trial_id(trial), state)


def frozen(study: optuna.Study, trial: Any) -> optuna.trial.FrozenTrial:
    """The stored copy of a trial."""
    return storage_of(study).get_trial(trial_id(trial))


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage keeps heartbeats (databases opened with a heartbeat interval)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


def record_heartbeat(study: optuna.Study, trial: Any) -> None:
    """Beat the trial's heartbeat once, when the study's storage keeps them."""
    storage = storage_of(study)
    if heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id(trial))


def unsynced_journal_backend() -> type:
    """Optuna's journal file backend without an fsync per write.

    A trial makes ~20 writes; syncing each to disk cost ~1 ms, over 2% of a 1 s trial. The writes
    still reach the kernel before the call returns (flush under the file lock), so a killed
    worker loses nothing; only a machine crash can lose the last lines, and Optuna's reader
    drops a torn last line.
    """
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import get_lock_file

    class UnsyncedJournalFileBackend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with get_lock_file(self._lock), open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()

    return UnsyncedJournalFileBackend


@contextlib.contextmanager
def tpe_split_once() -> Iterator[None]:
    """Within the block, TPE splits a given list of trials once, however many groups ask."""
    from optuna.samplers._tpe import sampler as tpe

    original = getattr(tpe, "_split_trials", None)
    if original is None:  # a later Optuna reorganised its internals: plain TPE
        yield
        return
    memo: dict[tuple, Any] = {}

    def split_once(study_: optuna.Study, trials: list, n_below: int) -> Any:
        # Each group gets a fresh list of the same trials; key on who is in it.
        key = (n_below, *(t.number for t in trials))
        if key not in memo:
            memo[key] = original(study_, trials, n_below)
        return memo[key]

    tpe._split_trials = split_once  # workers are processes: no other thread samples here
    try:
        yield
    finally:
        tpe._split_trials = original


class IncrementalGroups:
    """Optuna's group decomposition, folding in each finished trial once (it re-folds all)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: set[int] = set()

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> Any:
        """The groups of the study's finished trials, as Optuna's own `calculate` returns them."""
        states = ((TrialState.COMPLETE, TrialState.PRUNED) if self.inner._include_pruned
                  else (TrialState.COMPLETE,))
        for t in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
            if t.number not in self.seen:  # adding a trial twice never changes the groups
                self.seen.add(t.number)
                self.inner._search_space.add_distributions(t.distributions)
        return copy.deepcopy(self.inner._search_space)


def install_incremental_groups(sampler: optuna.samplers.TPESampler) -> None:
    """Give a grouped TPE sampler the incremental group decomposition (no-op if absent)."""
    groups = getattr(sampler, "_group_decomposed_search_space", None)
    if groups is not None and hasattr(groups, "_search_space"):
        sampler._group_decomposed_search_space = IncrementalGroups(groups)
