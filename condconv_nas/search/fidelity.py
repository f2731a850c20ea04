"""Longer runs of a study's architectures: retraining at full budget, and proxy fidelity.

`retrain` trains one architecture with the study's recipe for N epochs on the whole training
split (no `train_limit`), scored on the study's own validation split and, when asked, the test
split. `run_fidelity` retrains K searched and K baseline architectures that way, at a seed index
none of the study's runs used, and measures whether the proxy (each architecture's mean over the
study's runs) ranked them as the longer runs do: Kendall tau with a bootstrap 95% interval,
beside MAdds alone; the result is stored in the study so the report shows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd

from ..analysis.calibration import ci_text, rank_agreement
from ..analysis.results import load_results
from ..errors import UserError
from ..nn.spec import ArchSpec
from ..store.attrs import set_study_attr, whole
from ..store.record import SEARCH_FAMILIES

if TYPE_CHECKING:
    from torch import nn

    from ..train.data import Dataset
    from ..train.train import FitResult
    from .config import StudyConfig

__all__ = ["LongRunError", "fidelity_points", "fresh_seed", "retrain", "run_fidelity",
           "spread_ranks", "verdict"]


class LongRunError(UserError, LookupError):
    """Nothing to retrain: the study has no completed trials."""


def retrain(cfg: StudyConfig, spec: ArchSpec, epochs: int, device: str = "auto", eval_test: bool = False,
            progress: bool = False, checkpoint: Path | None = None,
            on_epoch: Callable[[int, float], None] | None = None, seed: int = 0
            ) -> tuple[nn.Module, FitResult, Dataset]:
    """Train `spec` for `epochs` on the full training split; returns (model, FitResult, data).

    `seed` is a seed index as the study's runs use them (init and recipe seeds moved by it; 0 is
    the search's own). With `checkpoint`, a run stopped after an epoch goes on from there when
    retrained; `on_epoch(epoch, val_acc)` is called after each epoch.
    """
    import torch

    from ..nn.model import build_model
    from ..train.data import resize
    from ..train.train import fit, resolve_device
    from .config import load_study_data

    dev = resolve_device(device if device != "auto" else cfg.device)
    data = load_study_data(cfg, dev, train_limit=None)
    recipe = dataclasses.replace(cfg.recipe, epochs=epochs, seed=cfg.recipe.seed + seed)
    run_data = resize(data, spec.input_size) if spec.input_size != data.size else data
    torch.manual_seed(cfg.seed + seed)
    model = build_model(spec)
    result = fit(model, run_data, recipe, on_epoch=on_epoch, eval_test=eval_test,
                 progress=progress, checkpoint=checkpoint)
    return model, result, data


def fidelity_points(done: pd.DataFrame, top: int, confirmed: pd.DataFrame | None = None
                    ) -> list[dict[str, Any]]:
    """K architectures of the search's runs and K of the baselines', each set spread over MAdds
    and over accuracy ranks within MAdds bins (`spread_ranks`).

    Not only front points: along a front the proxy's order is the MAdds order by construction,
    so a front alone cannot show the proxy ranking better than MAdds. Each architecture enters
    once (the base network anchoring several baseline families would otherwise enter tau as
    ties), with its proxy accuracy the mean over every run the study holds of it: search,
    control, baseline seeds and, from `confirmed`, confirmation seeds (one run per seed index: a
    reused or copied run is the same run).
    """
    frames = [f for f in (done, confirmed) if f is not None and not f.empty]
    if not frames:
        return []
    runs = pd.concat(frames, ignore_index=True)
    runs = runs[runs.spec.map(lambda v: isinstance(v, str) and bool(v)) & runs.val_acc.notna()]
    runs = runs.assign(identity=runs.spec.map(_identity),
                       seed=pd.to_numeric(runs.seed).fillna(0).astype(int))
    runs = runs.drop_duplicates(["identity", "seed"])
    archs = runs.groupby("identity", sort=False).agg(
        family=("family", "first"), number=("number", "first"), label=("label", "first"),
        spec=("spec", "first"), madds=("madds", "first"), params=("params", "first"),
        proxy_acc=("val_acc", "mean"), proxy_runs=("val_acc", "size")).reset_index(drop=True)
    points: list[dict[str, Any]] = []
    searched = archs.family.isin(SEARCH_FAMILIES)
    for group in (archs[searched], archs[~searched]):
        group = group.reset_index(drop=True)
        for i in spread_ranks(group.madds.tolist(), group.proxy_acc.tolist(), top):
            r = group.iloc[i]
            search = r.family in SEARCH_FAMILIES
            points.append({"source": r.family,
                           "name": f"trial {int(r.number)}" if search else str(r.label),
                           "spec": r.spec, "madds": int(r.madds),
                           "params": int(r.params) if r.params == r.params else None,
                           "proxy_acc": float(r.proxy_acc), "proxy_runs": int(r.proxy_runs)})
    return points


def spread_ranks(madds: Sequence[float], acc: Sequence[float], k: int) -> list[int]:
    """Indices of k items spread over MAdds and, within MAdds, over accuracy ranks.

    The items, sorted by MAdds, fall into round(sqrt(k)) bins of near-equal size; each bin's
    share of the k picks lies evenly over its accuracy ranks (its worst and best first), so both
    cheap and dear architectures enter with good and poor accuracies. All items when k >= n.
    """
    order = sorted(range(len(madds)), key=lambda i: (madds[i], acc[i]))
    if len(order) <= k:
        return order
    b = max(1, round(math.sqrt(k)))
    bins = [[int(i) for i in chunk] for chunk in np.array_split(order, b)]
    quota = [min(k // b + (j < k % b), len(bins[j])) for j in range(b)]
    while sum(quota) < k:  # a bin smaller than its share passes the rest on
        j = next(j for j in range(b) if quota[j] < len(bins[j]))
        quota[j] += 1
    picked: list[int] = []
    for members, q in zip(bins, quota):
        ranked = sorted(members, key=lambda i: (acc[i], madds[i]))
        m = len(ranked)
        picked += [ranked[m // 2]] if q == 1 else [ranked[round(i * (m - 1) / (q - 1))]
                                                   for i in range(q)]
    return sorted(picked, key=lambda i: (madds[i], acc[i]))


def fresh_seed(*frames: pd.DataFrame, planned: int = -1, chosen: int | None = None) -> int:
    """The seed index of the long runs: none of the study's runs used it (none of their luck).

    It is the first index above every one the stored runs used and the highest the config plans
    (`planned`), so that confirmation runs landing beside a stopped fidelity check do not move its
    index and discard its checkpoints; an index `chosen` by an earlier start is kept while that
    still holds.
    """
    used = {int(s) for f in frames for s in pd.to_numeric(f.seed, errors="coerce").dropna()}
    if chosen is not None and chosen > planned and chosen not in used:
        return chosen
    return max(max(used, default=-1), planned) + 1


def _identity(spec: str) -> str:
    """An architecture's identity: its spec JSON without the name."""
    data = json.loads(spec)
    data.pop("name", None)
    return json.dumps(data, sort_keys=True)


def verdict(agreement: dict[str, Any]) -> str:
    """What a reader may conclude from the proxy's rank agreement, by comparing intervals.

    `agreement` is `calibration.rank_agreement`'s: tau and MAdds' tau with their bootstrap 95%
    intervals and the paired interval of their difference, over `archs` architectures.
    """
    n, tau = agreement["archs"], agreement["tau"]
    if n < 4 or math.isnan(tau):
        return ("Too few architectures (or a constant ranking) to judge the proxy; retrain more "
                "(--top).")
    ci, gain = agreement["tau_ci95"], agreement["tau_gain_ci95"]
    both = (f"tau {tau:.2f} {ci_text(ci)} against {agreement['tau_madds']:.2f} "
            f"{ci_text(agreement['tau_madds_ci95'])} for MAdds alone, difference {ci_text(gain)}")
    if not ci[0] > 0:
        return (f"The proxy does NOT demonstrably rank architectures as the longer runs do "
                f"({both}): the 95% interval of its tau reaches zero, so the search and baseline "
                "comparison at this proxy budget is not evidence. Lengthen the proxy (more "
                "epochs or images) and search again.")
    if gain[0] > 0:
        return (f"The proxy ranks the architectures better than MAdds alone ({both}, above "
                "zero): its front is evidence beyond cost.")
    if gain[1] < 0:
        return (f"The proxy ranks the architectures worse than MAdds alone ({both}, below "
                "zero): its accuracies mislead beyond cost. Lengthen the proxy.")
    return (f"The proxy agrees with the longer runs but not demonstrably better than MAdds alone "
            f"({both}, which spans zero): its accuracies add no shown evidence beyond cost. "
            "Retrain more architectures (--top) or lengthen the proxy.")


def run_fidelity(cfg: StudyConfig, top: int, epochs: int, device: str = "auto",
                 print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Retrain the chosen points on a fresh seed index (resuming finished ones), store and
    return the fidelity record."""
    from ..store.storage import open_storage
    from .match import adopt_stored_layout

    cfg = adopt_stored_layout(cfg)  # a study stored before holdout splits keeps its layout
    storage = open_storage(cfg.storage, create=False)
    results = load_results(storage, cfg.name, cfg.storage)
    points = fidelity_points(results.finished, top, results.confirmed)
    if not points:
        raise LongRunError(f"study {cfg.name} has no completed trials; run the search first")
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    # Confirmation uses indices 1..confirm_seeds and the baselines 0..seeds-1: both may still be
    # training beside this check (scripts/fmnist_finding.sh runs them side by side).
    planned = max(cfg.confirm_seeds, cfg.baselines.seeds - 1)
    seed = fresh_seed(results.trials, results.confirmations, planned=planned,
                      chosen=study.user_attrs.get("fidelity_seed"))
    set_study_attr(study, "fidelity_seed", seed)
    done: dict[str, Any] = dict(whole(study.user_attrs, "fidelity_runs") or {})
    pending = {_key(p, epochs, seed): p for p in points if _key(p, epochs, seed) not in done}
    print_fn(f"fidelity of {cfg.name}: {len(points)} architectures, {epochs} epochs each on the "
             f"full training split at fresh seed index {seed} "
             f"({len(points) - len(pending)} already done)")
    for key, acc, seconds in _long_runs(cfg, pending, epochs, device, seed):
        done[key] = {"val_acc": acc, "seconds": seconds, "seed": seed}
        set_study_attr(study, "fidelity_runs", done)  # each run kept as it finishes
        p = pending[key]
        print_fn(f"  trained {p['source']} {p['name']}: {epochs}-epoch {acc:.4f} ({seconds:.0f} s)")
    for i, p in enumerate(points, 1):
        p["long_acc"] = done[_key(p, epochs, seed)]["val_acc"]
        print_fn(f"  {i}/{len(points)} {p['source']:>8} {p['name']:<22} {p['madds'] / 1e6:7.2f}M  "
                 f"proxy {p['proxy_acc']:.4f} ({p['proxy_runs']} runs)  "
                 f"{epochs}-epoch {p['long_acc']:.4f}")
    agreement = rank_agreement([p["proxy_acc"] for p in points], [p["long_acc"] for p in points],
                               [p["madds"] for p in points], [p["params"] or 0 for p in points])
    n = agreement.pop("archs")
    record = {**agreement, "n": n, "epochs": epochs, "seed": seed,
              "verdict": verdict({**agreement, "archs": n}),
              "points": [{k: v for k, v in p.items() if k != "spec"} for p in points]}
    set_study_attr(study, "fidelity", record)
    return record


def _long_runs(cfg: StudyConfig, points: dict[str, dict[str, Any]], epochs: int, device: str,
               seed: int = 0) -> Iterator[tuple[str, float, float]]:
    """Train each point's long run; yields (key, accuracy, seconds) as each finishes.

    Runs go to the study's worker processes when it has several (each with its share of the CPU
    threads, GPUs round robin), since a fidelity check is a few runs each several proxies long.
    """
    from .workers import cpu_share, resolve_workers, visible_gpus

    # Longest first (MAdds as the guess of a run's length), so that no worker starts the
    # longest run last while the others are done.
    jobs = sorted(points.items(), key=lambda kv: -kv[1]["madds"])
    n = min(resolve_workers(cfg).workers or 1, len(jobs))
    dev = device if device != "auto" else cfg.device
    if n <= 1:
        for key, p in jobs:
            yield _long_run(cfg, key, p["spec"], epochs, dev, label=p["name"], seed=seed)
        return
    from joblib import Parallel, delayed

    gpus = 0 if dev == "cpu" else visible_gpus(dataclasses.replace(cfg, device=dev))
    threads = cpu_share(n)
    yield from Parallel(n_jobs=n, backend="loky", return_as="generator_unordered")(
        delayed(_long_run)(cfg, key, p["spec"], epochs, f"cuda:{i % gpus}" if gpus else dev,
                           threads, p["name"], seed)
        for i, (key, p) in enumerate(jobs))


def _long_run(cfg: StudyConfig, key: str, spec: str, epochs: int, device: str,
              threads: int | None = None, label: str = "", seed: int = 0
              ) -> tuple[str, float, float]:
    """One long run (resumed from its checkpoint if one was stopped); (key, accuracy, seconds).

    Prints a line to stderr after each epoch: a run is hours on CPU, and workers' stderr is the
    terminal's (loky workers inherit it).
    """
    from ..train.checkpoint import checkpoint_path, remove_checkpoint

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by fit, in this worker process
    ckpt = checkpoint_path(cfg.artifacts, study=cfg.name, fidelity=key,
                           recipe=dataclasses.asdict(cfg.recipe), data=[cfg.dataset, cfg.val_size])
    started = time.perf_counter()

    def report(epoch: int, val_acc: float) -> None:
        print(f"  {label or key}: epoch {epoch}/{epochs}, val {val_acc:.4f} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    _, result, _ = retrain(cfg, ArchSpec.from_dict(json.loads(spec)), epochs, device,
                           checkpoint=ckpt, on_epoch=report, seed=seed)
    remove_checkpoint(ckpt)
    return key, result.val_acc, result.seconds


def _key(point: dict[str, Any], epochs: int, seed: int) -> str:
    """A long run's identity: architecture, epochs and seed index (older runs: no seed)."""
    import hashlib

    return f"{hashlib.sha1(point['spec'].encode()).hexdigest()[:16]}@{epochs}s{seed}"
