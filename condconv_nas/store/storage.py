"""Study storage: journal files and databases, heartbeats, stale trials, the claim lock.

A journal file serves the worker processes of one machine: a dead worker is found by its process
id. A database (PostgreSQL, MySQL, SQLite) serves many machines: each running trial beats a
heartbeat, and a trial whose worker stops beating is failed and queued again, once
(`RetryHeartbeatStaleTrialCallback`). Either way the failed attempt is marked `stale` so it does
not count against the study's trial budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import optuna
from optuna.trial import TrialState

from ..errors import UserError
from .optuna_internals import (
    heartbeat_enabled,
    set_trial_attrs,
    set_trial_state,
    storage_of,
    trial_id,
)
from .quiet import experimental
from .record import QUEUE_FIELDS, TrialRecord, record_attrs

__all__ = ["HEARTBEAT", "RetryStaleTrial", "StorageError", "alive", "beating",
           "budget_used", "claim_lock", "counted", "fail_and_requeue", "heartbeat_enabled",
           "list_studies", "open_storage", "reap_stale", "stale_numbers"]

HEARTBEAT = (60, 180)  # seconds between beats, seconds of silence before a trial is stale


class StorageError(UserError):
    """A storage that cannot be opened; nothing was created."""


def open_storage(url: str, create: bool = True, heartbeat: tuple[int, int] = HEARTBEAT
                 ) -> optuna.storages.BaseStorage:
    """A journal file (a plain path, safe for local worker processes) or any Optuna storage URL.

    With `create=False` (readers: report, export, studies) a missing journal or SQLite file is an
    error instead of a new empty file. Database storages get a heartbeat of `heartbeat` =
    (interval, grace) seconds: a trial whose worker stops beating for `grace` is failed and
    queued again once.
    """
    if not url.strip():
        raise StorageError("storage is empty; give a journal file path (studies/X.journal) or a "
                           "database URL")
    local = url if "://" not in url else url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not create and local and not Path(local).exists():
        raise StorageError(f"storage {url} does not exist; run `condconv-nas search` first or "
                           "give --storage")
    if "://" not in url:
        folder = Path(url).parent
        if not folder.is_dir():
            raise StorageError(f"storage {url}: folder {folder} does not exist")
        from .journal import open_journal

        return open_journal(url, writer=create)
    if url.startswith("sqlite:///"):
        file = Path(url[len("sqlite:///"):])
        if file.name and not file.parent.is_dir():
            raise StorageError(f"storage {url}: folder {file.parent} does not exist")
    tries = 0
    while True:
        try:
            with experimental("heartbeat_interval"), experimental("RetryHeartbeatStaleTrialCallback"):
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat[0],
                                                  grace_period=heartbeat[1],
                                                  heartbeat_stale_trial_callback=RetryStaleTrial())
        except Exception as err:  # sqlalchemy raises many kinds; all mean "cannot open"
            tries += 1
            if not _creation_race(err) or tries == CREATE_TRIES:
                _cannot_open(url, err)
            time.sleep(0.5 * tries)  # the other process's tables are there next time


# Workers started together on a fresh database all create Optuna's tables; PostgreSQL lets one
# win and fails the others (duplicate key / already exists). Opening again then finds the tables.
CREATE_TRIES = 5


def _creation_race(err: Exception) -> bool:
    """Whether opening failed only because another process created the same tables meanwhile."""
    text = str(err).lower()
    return "duplicate key" in text or "already exists" in text


def _cannot_open(url: str, err: Exception) -> NoReturn:
    """Raise the one-line StorageError for a database storage that cannot be opened."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, ImportError):  # the URL is fine, its database driver is missing
        raise StorageError(f"storage {url}: its database driver is not installed; pip "
                           "install 'condconv-nas[postgres]' (PostgreSQL) or the driver "
                           "SQLAlchemy names for this URL") from None
    raise StorageError(f"storage {url}: cannot be opened ({reason[:160]})") from None


def list_studies(url: str) -> list[dict]:
    """Studies in a storage with their trial counts by state."""
    storage = open_storage(url, create=False)
    out = []
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        out.append({"name": summary.study_name, "trials": sum(counts.values()), **counts})
    return out


@contextlib.contextmanager
def beating(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat the trial's heartbeat from a thread while the block runs (databases only)."""
    storage, tid = storage_of(study), trial_id(trial)
    if not heartbeat_enabled(storage):
        yield
        return
    stop = threading.Event()
    interval = storage.get_heartbeat_interval()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost beat is retried; grace covers gaps
                storage.record_heartbeat(tid)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{tid}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose heartbeat stopped (once), marking the failed attempt stale."""

    def __init__(self) -> None:
        super().__init__(max_retry=1)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if TrialRecord.of(trial.user_attrs).retry_of is not None:
            return  # queued again once, never twice (as for local workers)
        super().__call__(study, trial)
        # The failed trial is frozen now: the retry records why and whom it replaces.
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if (t.system_attrs.get("failed_trial") == trial.number
                    and TrialRecord.of(t.user_attrs).retry_of is None):
                # Not the dead worker's: a reaper on its host must not take the retry for dead.
                set_trial_attrs(study, t, record_attrs(
                    retry_of=trial.number, worker="",
                    retry_reason="its worker stopped beating (heartbeat)"))


def stale_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of failed attempts that were queued again, or marked stale when they died.

    A heartbeat retry cannot mark the failed trial itself (Optuna freezes finished trials), so
    the retry names it: `retry_of` (set here) or Optuna's `failed_trial` system attribute.
    """
    out = {t.number for t in trials if TrialRecord.of(t.user_attrs).stale}
    for t in trials:
        for ref in (TrialRecord.of(t.user_attrs).retry_of, t.system_attrs.get("failed_trial")):
            if isinstance(ref, int):
                out.add(ref)
    return out


def budget_used(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that use the study's budget: all but queued ones, dead attempts queued again and
    multi-fidelity promotions (the budget counts architectures sampled at the bottom rung)."""
    stale = stale_numbers(trials)
    return sum(counted(t, stale) for t in trials)


def counted(t: optuna.trial.FrozenTrial, stale: set[int] | None = None) -> bool:
    """Whether one trial uses the budget (pass `stale_numbers(trials)` to see heartbeat retries)."""
    record = TrialRecord.of(t.user_attrs)
    if t.state == TrialState.WAITING or record.stale or record.rung > 0:
        return False
    return stale is None or t.number not in stale


def alive(pid: int) -> bool:
    """Whether a local process id is running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"  # state follows the parenthesised name
    except (OSError, ValueError, IndexError):
        return True


def process_start(pid: int) -> str:
    """Which run of process `pid` this is: the boot's id and the process's start time ("" where
    /proc cannot tell), so that a pid reused after a restart is not taken for a trial's worker."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = stat[stat.rindex(")") + 2:].split()[19]  # field 22: clock ticks after boot
    except (OSError, ValueError, IndexError):
        return ""
    return f"{boot}:{start}"


def _owner_died(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial's worker ran on this machine and is gone: no such process, or the process
    under its pid is another one (started at another time or boot: a journal carried over a
    restart or to another machine of the same name)."""
    pid = _local_owner(t)
    if pid is None:
        return False
    if not alive(pid):
        return True
    started = TrialRecord.of(t.user_attrs).worker_started
    return bool(started) and process_start(pid) not in ("", started)


def _local_owner(t: optuna.trial.FrozenTrial) -> int | None:
    """The pid of the trial's worker when it ran on this machine."""
    w_host, _, pid = TrialRecord.of(t.user_attrs).worker.rpartition(":")
    return int(pid) if w_host == socket.gethostname() and pid.isdigit() else None


def reap_stale(study: optuna.Study) -> int:
    """Fail and re-queue (once) trials whose worker died; returns how many.

    Local workers are checked by process id; on databases Optuna's heartbeat check runs too.
    """
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _owner_died(t):
            n += fail_and_requeue(study, t, "its worker process died")
    if heartbeat_enabled(storage_of(study)):
        before = sum(t.state == TrialState.FAIL for t in study.get_trials(deepcopy=False))
        with experimental("fail_stale_trials"):
            optuna.storages.fail_stale_trials(study)
        n += sum(t.state == TrialState.FAIL for t in study.get_trials(deepcopy=False)) - before
    return n


def watchable_running(study: optuna.Study) -> bool:
    """Whether some RUNNING trial's owner can be watched: a live local process or a heartbeat."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if heartbeat_enabled(storage_of(study)):
        return bool(running)
    return any(_local_owner(t) is not None for t in running)


def fail_and_requeue(study: optuna.Study, t: optuna.trial.FrozenTrial, reason: str) -> int:
    """Mark a RUNNING trial failed and stale and queue its parameters again (once); 1 if done."""
    try:  # attributes first: Optuna refuses to change a finished trial
        set_trial_attrs(study, t, record_attrs(fail_reason=reason, stale=True))
        set_trial_state(study, t, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return 0  # another worker got there first (callers hold the claim lock, so rarely)
    record = TrialRecord.of(t.user_attrs)  # long fields put together (record_attrs splits them)
    carried = {k: getattr(record, k) for k in QUEUE_FIELDS if k in t.user_attrs}
    if not t.params and not carried:
        return 1  # claimed but never sampled: nothing to run again
    if record.retry_of is None:  # queued again once, never twice
        study.enqueue_trial(t.params, user_attrs=record_attrs(retry_of=t.number, **carried),
                            skip_if_exists=False)
    return 1


@contextlib.contextmanager
def claim_lock(storage_url: str) -> Iterator[None]:
    """Serialise 'count, then ask' so the trial budget is never exceeded: a file lock beside a
    journal or SQLite file, an advisory lock on PostgreSQL (every machine of the study)."""
    if storage_url.startswith("postgresql"):
        with _pg_advisory_lock(storage_url):
            yield
        return
    if "://" in storage_url and not storage_url.startswith("sqlite:///"):
        yield  # other databases: workers recount after asking (workers._over_budget)
        return
    target = storage_url[len("sqlite:///"):] if "://" in storage_url else storage_url
    with open(f"{target}.claim.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# One key for the claims of every study in a database: a claim holds it for a few queries.
CLAIM_LOCK_KEY = 0x636F6E64636F6E76  # "condconv"


@contextlib.contextmanager
def _pg_advisory_lock(url: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock, on a connection of its own that closes after use, so a
    worker that dies holding it lets it go with its connection."""
    import sqlalchemy

    with _engine(url).connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": CLAIM_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": CLAIM_LOCK_KEY})


@functools.cache
def _engine(url: str) -> Any:
    """One SQLAlchemy engine a database URL for the claim lock (NullPool: no idle connections)."""
    import sqlalchemy

    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
