"""Workers: the claim protocol (count, then ask, under a lock), the trial loop, and local processes.

A worker claims a trial only while the study's budget is not used, holds Ctrl-C/SIGTERM while it
claims or tells, and on databases recounts after asking (other machines claim too). Workers left
unset are one per visible GPU, each pinned with `CUDA_VISIBLE_DEVICES`, else one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from ..store.attrs import set_study_attr
from ..store.optuna_internals import frozen, record_heartbeat, set_trial_attrs, set_trial_state
from ..store.order import SearchOrder, stored_order
from ..store.quiet import heartbeat_ask
from ..store.record import TrialRecord, copy_source, record_attrs, write_record
from ..store.storage import (
    beating,
    budget_used,
    claim_lock,
    counted,
    fail_and_requeue,
    open_storage,
    process_start,
    reap_stale,
    stale_numbers,
    watchable_running,
)
from ..train.interrupts import check_interrupt, deferred_interrupt, stop_on_signals
from .config import StudyConfig, load_study_data, preprocess_of
from .learnfrom import sampler_trials
from .multifidelity import MultiFidelity, to_promote
from .objective import Objective, SkippedTrial, front_size
from .reproducible import (
    ReproducibleSampler,
    StudyView,
    ViewSampler,
    next_slot,
    slot_trials,
)
from .samplers import make_sampler

if TYPE_CHECKING:
    from ..train.data import Dataset

__all__ = ["cpu_share", "pending_promotion", "resolve_workers", "run_worker",
           "run_workers", "worker_envs"]


Claim = tuple[optuna.Trial, "StudyView | None"]
WAIT = "wait"  # a reproducible slot whose earlier results are not all stored yet
SLOT_POLL = 0.2  # seconds between looks while a slot waits for an earlier result


def _claim(study: optuna.Study, cfg: StudyConfig, worker: str, queued_only: bool = False,
           poll: float = 2.0, order: SearchOrder | None = None) -> Claim | None:
    """The next trial to run and, in a reproducible search, the finished trials its decisions
    may read (else None); None when the study's budget is used.

    While the budget is reached only because other workers' trials are running, wait: if one of
    them dies its trial is queued again and this worker runs it.
    """
    ordered = order is not None and order.reproducible and not queued_only
    t0, started = time.perf_counter(), process_start(os.getpid())
    while True:
        trial, wait = None, poll
        try:
            check_interrupt()  # a Ctrl-C swallowed during the last trial stops here
            with deferred_interrupt(), claim_lock(cfg.storage):
                reap_stale(study)
                trials = study.get_trials(deepcopy=False)
                if ordered:
                    assert order is not None
                    got = _claim_slot(study, cfg, trials, order.lag)
                    if isinstance(got, tuple):
                        slot, seen = got
                        study.sampler.bind_slot(  # type: ignore[attr-defined]
                            study, slot, sampler_trials(seen, cfg.multifidelity))
                        with heartbeat_ask():  # we beat it ourselves (storage.beating)
                            trial = study.ask()
                        write_record(trial, worker=worker, worker_started=started, slot=slot,
                                     waited_s=round(time.perf_counter() - t0, 3))
                        record_heartbeat(study, trial)
                        return trial, StudyView(study, seen)
                    if got is None and not watchable_running(study):
                        return None
                    wait = SLOT_POLL if got == WAIT else poll
                else:
                    waiting = [t for t in trials if t.state == TrialState.WAITING]
                    if cfg.multifidelity and not queued_only and not waiting:
                        # ASHA: a free worker first promotes what ranks in the top 1/eta of a rung.
                        waiting = _promote(study, trials, cfg.multifidelity)
                    promotion = any(TrialRecord.of(t.user_attrs).rung > 0 for t in waiting)
                    if promotion or (budget_used(trials) < cfg.trials
                                     and (waiting or not queued_only)):
                        if isinstance(study.sampler, ViewSampler):  # skipped trials, learn_from
                            study.sampler.bind(study, sampler_trials(trials, cfg.multifidelity))
                        with heartbeat_ask():  # we beat it ourselves (storage.beating)
                            trial = study.ask()
                        # Who claimed it, so others can tell if its owner died.
                        write_record(trial, worker=worker, worker_started=started)
                        record_heartbeat(study, trial)
                        if _over_budget(study, trial, cfg.trials):
                            continue  # another machine claimed the last trial first
                        return trial, None
                    if not watchable_running(study):
                        return None  # done (baselines run what was queued, never a sampled trial)
        except KeyboardInterrupt:  # Ctrl-C held until the claim finished: give the trial back
            if trial is not None:
                with deferred_interrupt():
                    fail_and_requeue(study, frozen(study, trial),
                                     "interrupted (Ctrl-C) as it was claimed; queued again")
            raise
        time.sleep(wait)


def _claim_slot(study: optuna.Study, cfg: StudyConfig, trials: list[optuna.trial.FrozenTrial],
                lag: int) -> tuple[int, list[optuna.trial.FrozenTrial]] | str | None:
    """A reproducible search's next (slot, the finished trials it reads), WAIT, or None (done).

    A queued retry keeps its slot. A new slot n reads slots 0..n-lag; in a multi-fidelity search
    it is a promotion when those rank one, and once the budget of samples is used a promotion is
    decided from every earlier slot, so that no decision depends on which trial finished first.
    """
    waiting = sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number)
    if waiting:  # Study.ask takes the lowest-numbered queued trial
        queued = TrialRecord.of(waiting[0].user_attrs).slot
        slot = next_slot(trials) if queued is None else queued
        seen = slot_trials(trials, slot - lag)
        return WAIT if seen is None else (slot, seen)
    slot, mf = next_slot(trials), cfg.multifidelity
    spent = budget_used(trials) >= cfg.trials
    if spent and mf is None:
        return None
    seen = slot_trials(trials, slot - (1 if spent else lag))
    if seen is None:
        return WAIT
    if mf is not None:
        pick = to_promote(_promotions(seen)[0], _promotions(trials)[1], mf)
        if pick is not None:
            number, rung = pick
            source = next(t for t in trials if t.number == number)
            study.enqueue_trial(source.params, skip_if_exists=False, user_attrs=record_attrs(
                rung=rung + 1, promoted_from=number, slot=slot))
            return slot, seen
        if spent:
            return None
    return slot, seen


def _promotions(trials: list[optuna.trial.FrozenTrial]
                ) -> tuple[dict[int, list[tuple[int, float, float]]], dict[int, set[int]]]:
    """Finished runs per rung (number, accuracy, MAdds) and the numbers promoted from each rung.

    A promotion queued, running, finished or failed for a reason of its own counts as made; a
    dead attempt does not (its retry, queued with the same rung, does). An architecture counts
    once per rung, as its first finished run: two workers may train it at once before either
    result is stored, and its twin would otherwise take a second promotion slot (skipped there
    as a repeat) that another architecture could have used.
    """
    stale = stale_numbers(trials)
    results: dict[int, list[tuple[int, float, float]]] = {}
    made: list[tuple[int, int]] = []  # (rung left, number promoted from)
    first: dict[tuple[int, str], int] = {}  # (rung, architecture) -> its first finished run
    arch: dict[int, str] = {}
    for t in sorted(trials, key=lambda t: t.number):
        r = TrialRecord.of(t.user_attrs)
        if t.number in stale:  # stale_numbers holds the attempts marked stale too
            continue
        arch[t.number] = r.arch_key
        if r.rung > 0 and r.promoted_from is not None:
            made.append((r.rung - 1, r.promoted_from))
        if (t.state == TrialState.COMPLETE and t.values and not r.infeasible
                and r.reused_from is None):
            if r.arch_key:  # records without one (none written today) count each run
                if (r.rung, r.arch_key) in first:
                    continue  # a twin trained at the same time as the first run
                first[(r.rung, r.arch_key)] = t.number
            results.setdefault(r.rung, []).append((t.number, t.values[0], t.values[1]))
    promoted: dict[int, set[int]] = {}
    for k, n in made:  # a promotion made from a twin (older studies) counts for its first run
        promoted.setdefault(k, set()).add(first.get((k, arch.get(n, "")), n))
    return results, promoted


def pending_promotion(trials: list[optuna.trial.FrozenTrial], mf: MultiFidelity | None) -> bool:
    """Whether a multi-fidelity study still has a promotion to queue or a queued run to train."""
    if mf is None:
        return False
    return (any(t.state == TrialState.WAITING for t in trials)
            or to_promote(*_promotions(trials), mf) is not None)


def _promote(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], mf: MultiFidelity
             ) -> list[optuna.trial.FrozenTrial]:
    """Queue the next promotion, if any; returns the study's waiting trials afterwards."""
    pick = to_promote(*_promotions(trials), mf)
    if pick is None:
        return []
    number, rung = pick
    source = next(t for t in trials if t.number == number)
    study.enqueue_trial(source.params, skip_if_exists=False,
                        user_attrs=record_attrs(rung=rung + 1, promoted_from=number))
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def _over_budget(study: optuna.Study, trial: optuna.Trial, total: int) -> bool:
    """On a database, count-then-ask is not atomic across machines: recount after asking.

    The trials that use the budget, by number, are kept up to `total`; a later one gives itself
    up (failed and stale: it never ran). A promotion that another machine queued too is kept
    once, the lower number. Journal and SQLite files and PostgreSQL hold the claim lock, so it
    fires only on other databases.
    """
    trials = study.get_trials(deepcopy=False)
    stale = stale_numbers(trials)
    mine = TrialRecord.of(trial.user_attrs)
    if mine.rung > 0:
        rivals = [t.number for t in trials if t.number not in stale
                 and (r := TrialRecord.of(t.user_attrs)).rung == mine.rung
                 and r.promoted_from == mine.promoted_from and t.state != TrialState.WAITING]
        if min(rivals, default=trial.number) == trial.number:
            return False
    else:
        kept = sorted(t.number for t in trials if counted(t, stale))
        if trial.number in kept[:total]:
            return False
    set_trial_attrs(study, trial, record_attrs(stale=True, fail_reason="claimed past the budget"))
    set_trial_state(study, trial, TrialState.FAIL)
    return True


def run_worker(cfg: StudyConfig, index: int = 0, print_fn: Callable[[str], None] = print,
               baseline: bool = False, salt: int = 0, data: Dataset | None = None) -> int:
    """One worker: claim trials until the study's budget is used; returns trials it finished.

    With `baseline`, `cfg` is the baseline study's config and the worker runs queued points only.
    """
    from ..train.train import NonFiniteLossError, resolve_device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(cfg.device)
    storage = open_storage(cfg.storage, heartbeat=cfg.heartbeat)
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    order = None if baseline else stored_order(study)
    if order is not None and order.reproducible:  # each slot's sampler from (seed, slot)
        study.sampler = ReproducibleSampler(
            lambda seed: make_sampler(cfg.sampler, seed, cfg.trials), cfg.seed)
    else:  # seed + worker index; `salt` moves resumed and joining runs to new sequences
        study.sampler = make_sampler(cfg.sampler, (cfg.seed + index + salt) % 2**32, cfg.trials)
        if not baseline:  # bound at each claim to the trials as the sampler is shown them
            study.sampler = ViewSampler(study.sampler)
    if data is None or data.train.images.device != device:
        data = load_study_data(cfg, device)
    if "preprocess" not in study.user_attrs:  # what an exported model expects of its input
        set_study_attr(study, "preprocess", preprocess_of(data))
    objective = Objective(cfg, data, device, baseline=baseline)
    finished = 0
    while (claim := _claim(study, cfg, objective.worker, queued_only=baseline,
                           order=order)) is not None:
        trial, seen = claim
        if baseline and TrialRecord.of(trial.user_attrs).baseline_spec is None:
            # Another machine took the last queued point between our look and our ask.
            with deferred_interrupt():
                write_record(trial, stale=True)
                study.tell(trial, state=TrialState.FAIL)
            break
        t0 = time.perf_counter()
        state, values, note = TrialState.COMPLETE, None, ""
        try:
            with beating(study, trial):
                values = objective(study, trial, seen)
        except SkippedTrial:  # not trained: the record says why (the progress line too)
            state = TrialState.PRUNED
        except optuna.TrialPruned as err:
            state, note = TrialState.PRUNED, str(err)
        except KeyboardInterrupt:
            with deferred_interrupt():
                fail_and_requeue(study, frozen(study, trial), "interrupted (Ctrl-C); queued to run again")
            raise
        except (NonFiniteLossError, RuntimeError, ValueError, MemoryError) as err:
            state, note = TrialState.FAIL, f"{type(err).__name__}: {err}"
            write_record(trial, fail_reason=note[:500])
        with deferred_interrupt():
            if state == TrialState.COMPLETE:
                study.tell(trial, values)
            else:
                study.tell(trial, state=state)
        finished += 1
        print_fn(_progress_line(study, frozen(study, trial), baseline, time.perf_counter() - t0,
                                note, None if baseline else cfg.multifidelity))
    return finished


def _progress_line(study: optuna.Study, t: optuna.trial.FrozenTrial, baseline: bool,
                   seconds: float, note: str, mf: MultiFidelity | None = None) -> str:
    record = TrialRecord.of(t.user_attrs)
    acc = ("over budget" if record.infeasible else f"acc {t.values[0]:.4f}" if t.values else
           f"acc {record.known_values[0]:.4f}" if record.known_values else
           f"acc {record.final_acc():.4f}" if record.curve else "acc -")
    reused = (f" (same as #{record.reused_from})" if record.reused_from is not None else
              f" (copied from {copy_source(record.copied_from)})" if record.copied_from
              else "")
    if baseline:
        reused = f"  {record.baseline_label} seed {record.seed}" + reused
    if mf:
        reused = (f"  rung {record.rung} ({mf.rungs[record.rung]} ep"
                  + (f", from #{record.promoted_from})" if record.promoted_from is not None
                     else ")") + reused)
    if record.compile_note:
        acc += "  (eager: compile failed)"
    elif record.compile_seconds:
        acc += f"  (compile {record.compile_seconds:.1f}s)"
    if record.latency_ms is not None:
        acc += f"  {record.latency_ms:.2f} ms" + ("" if record.latency_isolated else " (noisy)")
    state = "skipped" if record.skipped else t.state.name.lower()
    return (f"trial {t.number:4d}  {(record.madds or 0) / 1e6:8.2f}M MAdds  {acc}  "
            f"{state}{reused}  {seconds:6.1f}s  "
            f"front {front_size(study, mf.top if mf else None)}"
            + (f"  [{note[:120]}]" if note else ""))


def _worker_entry(cfg: StudyConfig, index: int, env: dict[str, str], baseline: bool,
                  salt: int) -> int:
    os.environ.update(env)  # before torch is imported in this process
    with stop_on_signals():  # a Ctrl-C to the terminal reaches these processes too
        return run_worker(cfg, index, print_fn=lambda s: print(s, flush=True), baseline=baseline,
                          salt=salt)


def visible_gpus(cfg: StudyConfig) -> int:
    """GPUs a study may use: none for a CPU study, else every visible one."""
    if cfg.device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def resolve_workers(cfg: StudyConfig) -> StudyConfig:
    """The config with its worker count settled: when unset, workers_per_gpu on each visible
    GPU, else one."""
    if cfg.workers:
        return cfg
    return dataclasses.replace(cfg, workers=max(1, visible_gpus(cfg) * cfg.workers_per_gpu))


def run_workers(cfg: StudyConfig, print_fn: Callable[[str], None], baseline: bool,
                salt: int = 0, data: Dataset | None = None) -> int:
    """Run `cfg.workers` workers (in this process when one); returns the trials they finished."""
    if cfg.workers == 1:
        return run_worker(cfg, 0, print_fn, baseline=baseline, salt=salt, data=data)
    from joblib import Parallel, delayed

    envs = worker_envs(cfg)
    ran = Parallel(n_jobs=cfg.workers, backend="loky")(
        delayed(_worker_entry)(cfg, i, envs[i], baseline, salt) for i in range(cfg.workers))
    return sum(ran)


def cpu_share(workers: int, cores: int | None = None) -> int:
    """Threads each of `workers` processes gets of the cores this process may use (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return max(1, cores // workers)


def worker_envs(cfg: StudyConfig, gpus: int | None = None,
                cores: int | None = None) -> list[dict[str, str]]:
    """Each worker's environment: its GPU (round robin, so N per GPU when workers = N x GPUs)
    and its share of the CPU threads, so several workers on a GPU do not oversubscribe the host."""
    gpus = visible_gpus(cfg) if gpus is None else gpus
    threads = str(cpu_share(cfg.workers, cores))
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus), "OMP_NUM_THREADS": threads}
                for i in range(cfg.workers)]
    return [{"OMP_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""} for _ in range(cfg.workers)]
