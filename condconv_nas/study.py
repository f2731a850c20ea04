"""Study entry points: run or resume a search, queue and train its baselines, join from elsewhere.

The parts live in modules of their own: `config` (study files), `samplers`, `objective` (one
trial), `workers` (the claim protocol and worker processes) and `storage`. The names a user of the
Python API needs are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import zlib
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from .baselines import baseline_grid
from .config import (
    PrunerConfig,
    StudyConfig,
    StudyError,
    baseline_study_config,
    control_study_config,
    load_study_config,
    load_study_data,
    manifest,
    with_overrides,
)
from .cost import CONVENTION
from .record import TrialRecord, record_attrs
from .spec import ArchSpec
from .storage import StorageError, budget_used, claim_lock, list_studies, open_storage, reap_stale
from .workers import deferred_interrupt, resolve_workers, run_workers

__all__ = ["PrunerConfig", "StorageError", "StudyConfig", "StudyError", "baseline_study_config",
           "control_study_config", "join_study", "list_studies", "load_study_config",
           "open_storage", "run_baselines", "run_search", "with_overrides"]


def open_study(cfg: StudyConfig, kind: str) -> optuna.Study:
    """Create or load the study; store its kind, config and the MAdds convention once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.storage, heartbeat=cfg.heartbeat)
    study = optuna.create_study(study_name=cfg.name, storage=storage, load_if_exists=True,
                                directions=["maximize", "minimize"])
    if study.user_attrs.get("madds_convention") != CONVENTION:
        study.set_metric_names(["val_acc", "madds"])
        study.set_user_attr("madds_convention", CONVENTION)
        study.set_user_attr("kind", kind)
        study.set_user_attr("config", manifest(cfg))
    return study


def run_search(cfg: StudyConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Create or resume the study, then run its workers to the total trial budget."""
    cfg = resolve_workers(cfg)
    # A dataset that cannot be read is reported before the study is created or touched; a single
    # in-process worker then trains on this very copy.
    data = load_study_data(cfg)
    study = open_study(cfg, "random-control" if cfg.name.endswith(".random") else "search")
    stale = reap_stale(study)
    if stale:
        print_fn(f"{stale} trial(s) left running by a stopped run: marked failed, queued again")
    trials = study.get_trials(deepcopy=False)
    done = budget_used(trials)
    if done >= cfg.trials:
        print_fn(f"study {cfg.name} already has {done} of {cfg.trials} trials; nothing to do "
                 f"(raise --trials to go on)")
        return {"ran": 0}
    print_fn(f"study {cfg.name}: {done} of {cfg.trials} trials done; storage {cfg.storage}; "
             f"{cfg.workers} worker(s); sampler {cfg.sampler}; budget {cfg.budget_madds:,} MAdds")
    # A fresh study is reproducible (salt 0); a resumed one must not replay the first run's samples.
    return {"ran": run_workers(cfg, print_fn, baseline=False, salt=1009 * len(trials), data=data)}


def join_study(cfg: StudyConfig, print_fn: Callable[[str], None] = print,
               baseline: bool = False) -> dict:
    """Join a study that `search` (or `baselines`) started, from any machine sharing its storage.

    The worker claims trials until the study's budget is used, and while other workers' trials
    run it stays to take over any whose worker dies (heartbeat on databases).
    """
    name = f"{cfg.name}.baseline" if baseline else cfg.name
    cfg = resolve_workers(cfg)
    storage = open_storage(cfg.storage, create=False, heartbeat=cfg.heartbeat)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        start = "baselines" if baseline else "search"
        raise StudyError(f"{cfg.path}: study {name} is not in storage {cfg.storage}; start it "
                         f"with `condconv-nas {start}` first") from None
    if baseline:
        trials = study.get_trials(deepcopy=False)
        cfg = dataclasses.replace(baseline_study_config(cfg), trials=budget_used(trials) + sum(
            t.state == TrialState.WAITING for t in trials))
    done = budget_used(study.get_trials(deepcopy=False))
    print_fn(f"joining study {name}: {done} of {cfg.trials} trials claimed; storage "
             f"{cfg.storage}; {cfg.workers} worker(s)")
    # Machines joining at once must not replay one another's samples: salt with host and pid.
    salt = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) + 1009 * done
    return {"ran": run_workers(cfg, print_fn, baseline=baseline, salt=salt)}


def run_baselines(cfg: StudyConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Queue the baseline grid (points not yet stored) in `X.baseline` and train it."""
    settings = cfg.baselines
    bcfg = baseline_study_config(resolve_workers(cfg))
    # The dataset's shape fixes input size, channels and classes of every baseline; loading it
    # here also reports a missing dataset before anything is queued.
    data = load_study_data(cfg)
    space = cfg.space

    def adapt(spec: ArchSpec) -> ArchSpec:
        return spec.for_input(data.in_channels, spec.input_size if space.resolution else data.size,
                              data.num_classes)

    grid = baseline_grid(space, settings.families, settings.points, adapt=adapt)
    study = open_study(bcfg, "baseline")
    stale = reap_stale(study)
    if stale:
        print_fn(f"{stale} trial(s) left running by a stopped run: marked failed, queued again")
    with deferred_interrupt(), claim_lock(bcfg.storage):
        records = [TrialRecord.of(t.user_attrs) for t in study.get_trials(deepcopy=False)]
        have = {(r.baseline_label, r.seed) for r in records if not r.stale}
        queued = 0
        for point in grid:
            for seed in range(settings.seeds):
                if (point.label, seed) in have:
                    continue
                study.enqueue_trial({}, skip_if_exists=False, user_attrs=record_attrs(
                    baseline_spec=point.spec.to_dict(), family=point.family,
                    multiplier=point.multiplier, seed=seed, baseline_label=point.label))
                queued += 1
        trials = study.get_trials(deepcopy=False)
        total = budget_used(trials) + sum(t.state == TrialState.WAITING for t in trials)
    bcfg = dataclasses.replace(bcfg, trials=total)
    done = total - sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
    print_fn(f"study {bcfg.name}: {len(grid)} architectures x {settings.seeds} seed(s) "
             f"({', '.join(settings.families)}); {done} of {total} trials done, {queued} newly "
             f"queued; storage {bcfg.storage}; {bcfg.workers} worker(s)")
    if done >= total:
        print_fn("nothing to do (raise baselines.points or seeds to go on)")
        return {"ran": 0}
    return {"ran": run_workers(bcfg, print_fn, baseline=True, data=data)}
