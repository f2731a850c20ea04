"""Study entry points: run or resume a search, queue and train its baselines, join from elsewhere.

The parts live in modules of their own: `config` (study files), `samplers`, `objective` (one
trial), `workers` (the claim protocol and worker processes) and `storage`. The names a user of the
Python API needs are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from ..nn.cost import CONVENTION, count_cost
from ..nn.spec import ArchSpec
from ..store.attrs import set_study_attr
from ..store.order import stored_order
from ..store.quiet import experimental
from ..store.record import TrialRecord, record_attrs
from ..store.siblings import Sibling, study_root
from ..store.storage import (
    StorageError,
    budget_used,
    claim_lock,
    list_studies,
    open_storage,
    reap_stale,
)
from ..train.interrupts import deferred_interrupt
from .baselines import baseline_grid, search_range
from .config import (
    PrunerConfig,
    StudyConfig,
    StudyError,
    baseline_study_config,
    calibrate_study_config,
    confirm_study_config,
    control_study_config,
    load_study_config,
    load_study_data,
    with_overrides,
)
from .match import adopt_stored_layout, check_settings, manifest, result_settings
from .objective import QUEUED_MEANINGS
from .reproducible import settle_order
from .workers import pending_promotion, resolve_workers, run_workers

if TYPE_CHECKING:
    from ..train.data import Dataset
    from .space import SearchSpace

__all__ = ["PrunerConfig", "StorageError", "StudyConfig", "StudyError", "baseline_study_config",
           "control_study_config", "join_study", "list_studies", "load_study_config",
           "open_storage", "run_baselines", "run_confirm", "run_search",
           "with_overrides"]


def open_study(cfg: StudyConfig, kind: str, parent: str = "") -> optuna.Study:
    """Create or load the study; store its kind, config and the MAdds convention once.

    A study (and its `parent`, the search study of a sibling) that was run with other result
    settings (dataset, split, recipe, seed, budget, space) is refused before anything is
    written: results trained differently must not mix in one study.
    """
    from ..train.train import resolve_device

    resolve_device(cfg.device)  # `cuda` without a GPU: said before an empty study is created
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.storage, heartbeat=cfg.heartbeat)
    now = result_settings(cfg)
    names = {s.study_name for s in storage.get_all_studies()}
    for name in [n for n in (parent, cfg.name) if n and n in names]:
        check_settings(cfg, optuna.load_study(study_name=name, storage=storage), now)
    study = optuna.create_study(study_name=cfg.name, storage=storage, load_if_exists=True,
                                directions=["maximize", "minimize"])
    if "settings" not in study.user_attrs:
        set_study_attr(study, "settings", now)
    if "parameters" not in study.user_attrs:  # what each parameter means, for Optuna's tools
        searched = kind in ("search", "random-control")
        set_study_attr(study, "parameters", cfg.space.describe() if searched else QUEUED_MEANINGS)
    if study.user_attrs.get("madds_convention") != CONVENTION:
        with experimental("set_metric_names"):
            study.set_metric_names(["val_acc", "latency_ms" if cfg.objective == "latency" else "madds"])
        set_study_attr(study, "madds_convention", CONVENTION)
        set_study_attr(study, "kind", kind)
        set_study_attr(study, "config", manifest(cfg))
    return study


def run_search(cfg: StudyConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Create or resume the study, then run its workers to the total trial budget."""
    cfg = resolve_workers(adopt_stored_layout(cfg))
    # A dataset that cannot be read is reported before the study is created or touched; a single
    # in-process worker then trains on this very copy.
    data = load_study_data(cfg)
    span = check_budget(cfg, data)
    control = cfg.name.endswith(Sibling.RANDOM.value)
    study = open_study(cfg, "random-control" if control else "search",
                       parent=study_root(cfg.name) if control else "")
    stale = reap_stale(study)
    if stale:
        print_fn(f"{stale} trial(s) left running by a stopped run: marked failed, queued again")
    order = settle_order(study, cfg.reproducible, cfg.workers, cfg.storage, print_fn)
    trials = study.get_trials(deepcopy=False)
    done = budget_used(trials)
    if done >= cfg.trials and not pending_promotion(trials, cfg.multifidelity):
        print_fn(f"study {cfg.name} already has {done} of {cfg.trials} trials; nothing to do "
                 f"(raise --trials to go on)")
        return {"ran": 0}
    mf = cfg.multifidelity
    rungs = (f"; multi-fidelity rungs {'/'.join(map(str, mf.rungs))} epochs, eta {mf.eta}"
             if mf else "")
    print_fn(f"study {cfg.name}: {done} of {cfg.trials} trials done; storage {cfg.storage}; "
             f"{cfg.workers} worker(s); sampler {cfg.sampler}; budget {cfg.budget_madds:,} MAdds"
             + rungs)
    print_fn(f"{span}; {order.describe()}")
    # Unordered, a resumed run must not replay the first run's samples: salt by what is stored.
    salt = 0 if order.reproducible else 1009 * len(trials)
    return {"ran": run_workers(cfg, print_fn, baseline=False, salt=salt, data=data)}


def join_study(cfg: StudyConfig, print_fn: Callable[[str], None] = print,
               baseline: bool = False, confirm: bool = False, calibrate: bool = False) -> dict:
    """Join a study that `search` (`baselines`, `confirm`) started, from any machine sharing its storage.

    The worker claims trials until the study's budget is used, and while other workers' trials
    run it stays to take over any whose worker dies (heartbeat on databases).
    """
    sibling = (confirm_study_config if confirm else baseline_study_config if baseline
               else calibrate_study_config if calibrate else None)
    queued = sibling is not None
    name = sibling(cfg).name if sibling else cfg.name
    cfg = resolve_workers(adopt_stored_layout(cfg))
    storage = open_storage(cfg.storage, create=False, heartbeat=cfg.heartbeat)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        start = ("confirm" if confirm else "baselines" if baseline else "calibrate" if calibrate
                 else "search")
        raise StudyError(f"{cfg.path}: study {name} is not in storage {cfg.storage}; start it "
                         f"with `condconv-nas {start}` first") from None
    check_settings(cfg, study, result_settings(sibling(cfg) if sibling else cfg))
    if sibling:
        trials = study.get_trials(deepcopy=False)
        cfg = dataclasses.replace(sibling(cfg), trials=budget_used(trials) + sum(
            t.state == TrialState.WAITING for t in trials))
    done = budget_used(study.get_trials(deepcopy=False))
    order = "" if queued or (o := stored_order(study)) is None else f"; {o.describe()}"
    print_fn(f"joining study {name}: {done} of {cfg.trials} trials claimed; storage "
             f"{cfg.storage}; {cfg.workers} worker(s){order}")
    # Machines joining at once must not replay one another's samples: salt with host and pid.
    salt = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) + 1009 * done
    return {"ran": run_workers(cfg, print_fn, baseline=queued, salt=salt)}


def _queue(study: optuna.Study, storage_url: str, points: list[dict], seeds: range) -> int:
    """Queue each point once per seed unless a live attempt exists; failed ones run again.

    A point is its record fields (spec, family, label, ...); an attempt that failed for a
    reason of its own (not a dead worker, which is queued again anyway) is retried here.
    """
    with deferred_interrupt(), claim_lock(storage_url):
        trials = study.get_trials(deepcopy=False)
        have = {(r.baseline_label, r.seed) for t in trials
                if not (r := TrialRecord.of(t.user_attrs)).stale and t.state != TrialState.FAIL}
        queued = 0
        for point in points:
            for seed in seeds:
                if (point["baseline_label"], seed) not in have:
                    study.enqueue_trial({}, skip_if_exists=False,
                                        user_attrs=record_attrs(**point, seed=seed))
                    queued += 1
    return queued


def queue_runs(study: optuna.Study, cfg: StudyConfig, points: list[dict], seeds: range,
                print_fn: Callable[[str], None]) -> tuple[int, int, StudyConfig]:
    """Requeue dead attempts, queue the points, and budget the sibling study to what it holds.

    Returns (runs newly queued, runs waiting, `cfg` whose trials are those used plus waiting).
    """
    stale = reap_stale(study)
    if stale:
        print_fn(f"{stale} trial(s) left running by a stopped run: marked failed, queued again")
    queued = _queue(study, cfg.storage, points, seeds)
    trials = study.get_trials(deepcopy=False)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return queued, waiting, dataclasses.replace(cfg, trials=budget_used(trials) + waiting)


def space_adapter(space: SearchSpace, data: Dataset) -> Callable[[ArchSpec], ArchSpec]:
    """Specs fitted to the dataset (its shape fixes every baseline and calibration run)."""
    return lambda spec: space.for_data(spec, data.in_channels, data.size, data.num_classes)


def check_budget(cfg: StudyConfig, data: Dataset) -> str:
    """Refuse a budget below the space's cheapest architecture; else a line on the space's range."""
    adapt = space_adapter(cfg.space, data)
    cheapest, costliest = (count_cost(adapt(s)).madds for s in cfg.space.extremes())
    if cheapest > cfg.budget_madds:
        raise StudyError(f"{cfg.path}: budget_madds: {cfg.budget_madds:,} is below the cheapest "
                         f"architecture of the space ({cheapest:,} MAdds on {cfg.dataset}), so "
                         f"every trial would be over budget; raise budget_madds to at least "
                         f"{cheapest:,}")
    return (f"space: {cheapest / 1e6:.2f}M to {costliest / 1e6:.2f}M MAdds on {cfg.dataset}"
            + ("" if costliest <= cfg.budget_madds else
               f"; architectures over the {cfg.budget_madds / 1e6:.2f}M budget are counted as "
               "trials, not trained"))


def run_baselines(cfg: StudyConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Queue the baseline grid (points not yet stored) in `X.baseline` and train it."""
    cfg = adopt_stored_layout(cfg)
    settings = cfg.baselines
    bcfg = baseline_study_config(resolve_workers(cfg))
    # The dataset's shape fixes input size, channels and classes of every baseline; loading it
    # here also reports a missing dataset before anything is queued.
    data = load_study_data(cfg)
    check_budget(cfg, data)  # the grid spans the search's range up to the budget
    space = cfg.space
    adapt = space_adapter(space, data)
    # The study's budget, not the space's: search points up to it must have a baseline to meet.
    grid = baseline_grid(space, settings.families, settings.points, adapt=adapt,
                         madds_range=search_range(space, adapt, cfg.budget_madds))
    study = open_study(bcfg, "baseline", parent=cfg.name)
    queued, waiting, bcfg = queue_runs(study, bcfg, [
        {"baseline_spec": p.spec.to_dict(), "family": p.family, "multiplier": p.multiplier,
         "baseline_label": p.label} for p in grid], range(settings.seeds), print_fn)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               for t in study.get_trials(deepcopy=False))
    total = done + waiting
    print_fn(f"study {bcfg.name}: {len(grid)} architectures x {settings.seeds} seed(s) "
             f"({', '.join(settings.families)}); {done} of {total} trials done, {queued} newly "
             f"queued; storage {bcfg.storage}; {bcfg.workers} worker(s)")
    if done >= total:
        print_fn("nothing to do (raise baselines.points or seeds to go on)")
        return {"ran": 0}
    return {"ran": run_workers(bcfg, print_fn, baseline=True, data=data)}


def run_confirm(cfg: StudyConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Retrain every front architecture of the search (and of its control) with fresh seeds, and
    train each one's matched-cost controls under the same seeds.

    Runs go to the sibling study `X.confirm`, seed indices 1..N (the search trained each with
    index 0), so the selection that put a point on the front cannot inflate its confirmed mean.
    When latency was measured, the front on measured latency is confirmed too (the report makes
    the same claims on that axis). Every run is scored on the holdout split, which no search
    trial saw; the claims use those scores only.
    """
    from ..analysis.pareto import front, latency_axis
    from ..analysis.results import load_results
    from ..store.record import BASELINE_FAMILIES, SEARCH_FAMILIES

    cfg = adopt_stored_layout(cfg)
    ccfg = confirm_study_config(resolve_workers(cfg))
    results = load_results(open_storage(cfg.storage, create=False), cfg.name, cfg.storage)
    done = results.finished
    points, seen = [], set()
    for source in SEARCH_FAMILIES:
        sub = done[done.family == source]
        # On the latency front `madds` holds milliseconds; the count stays in `madds_count`.
        for r in [*front(sub).itertuples(), *front(latency_axis(sub)).itertuples()]:
            if (source, int(r.number)) in seen:
                continue
            seen.add((source, int(r.number)))
            points.append({"baseline_spec": json.loads(r.spec), "family": source,
                           "confirm_of": int(r.number), "baseline_label": f"{source} #{r.number}",
                           "madds": int(getattr(r, "madds_count", r.madds))})
    if not points:
        raise StudyError(f"{cfg.path}: study {cfg.name} has no completed trials to confirm; run "
                         "`condconv-nas search` first")
    data = load_study_data(cfg)
    # Controls for the families whose baselines are stored, over the MAdds range stored there:
    # the report reads a family's range from the same runs.
    ranges = {f: (float(g.madds.min()), float(g.madds.max()))
              for f, g in done[done.family.isin(BASELINE_FAMILIES)].groupby("family")}
    if not ranges and cfg.holdout is not None:
        print_fn("note: no baselines are stored yet, so no matched-cost controls are trained; "
                 "run `condconv-nas baselines`, then `confirm` again to add them")
    controls = _controls(cfg, data, [p["madds"] for p in points], ranges, print_fn)
    study = open_study(ccfg, "confirm", parent=cfg.name)
    queued, waiting, ccfg = queue_runs(study, ccfg, [{k: v for k, v in p.items() if k != "madds"}
                                                      for p in points] + controls,
                                        range(1, cfg.confirm_seeds + 1), print_fn)
    print_fn(f"study {ccfg.name}: {len(points)} front architectures and {len(controls)} "
             f"matched-cost controls x {cfg.confirm_seeds} fresh seed(s); {queued} runs newly "
             f"queued, {waiting} to run; storage {ccfg.storage}; {ccfg.workers} worker(s)")
    if not waiting:
        print_fn("nothing to do (every front architecture and control is trained)")
        return {"ran": 0}
    return {"ran": run_workers(ccfg, print_fn, baseline=True, data=data)}


def _controls(cfg: StudyConfig, data: Dataset, madds: list[int],
              ranges: dict[str, tuple[float, float]], print_fn: Callable[[str], None]
              ) -> list[dict]:
    """The queued runs of every point's matched-cost controls (baselines.control_runs); a study
    stored before holdout splits existed gets none (nothing it trains can make a claim)."""
    from .baselines import control_runs

    if cfg.holdout is None:
        print_fn(f"note: study {cfg.name} was stored before holdout splits existed: its runs are "
                 "scored on the validation split that selected the front, so the report makes "
                 "no claim and no controls are trained; run the study under a new name for one")
        return []
    return control_runs(cfg.space, madds, ranges, space_adapter(cfg.space, data))
