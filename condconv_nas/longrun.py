"""Longer runs of a study's architectures: retraining at full budget, and proxy fidelity.

`retrain` trains one architecture with the study's recipe for N epochs on the whole training
split (no `train_limit`), scored on the study's own validation split and, when asked, the test
split. `run_fidelity` retrains K search-front and K baseline architectures that way and measures
whether the proxy ranked them as the longer runs do (Kendall tau); the result is stored in the
study so the report shows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd

from .errors import UserError
from .pareto import front, kendall_tau, seed_means
from .record import SEARCH, SEARCH_FAMILIES
from .results import load_results
from .spec import ArchSpec

if TYPE_CHECKING:
    from torch import nn

    from .config import StudyConfig
    from .data import Dataset
    from .train import FitResult

__all__ = ["LongRunError", "fidelity_points", "retrain", "run_fidelity", "verdict"]


class LongRunError(UserError, LookupError):
    """Nothing to retrain: the study has no completed trials."""


def retrain(cfg: StudyConfig, spec: ArchSpec, epochs: int, device: str = "auto", eval_test: bool = False,
            progress: bool = False, checkpoint: Path | None = None,
            on_epoch: Callable[[int, float], None] | None = None
            ) -> tuple[nn.Module, FitResult, Dataset]:
    """Train `spec` for `epochs` on the full training split; returns (model, FitResult, data).

    With `checkpoint`, a run stopped after an epoch goes on from there when retrained;
    `on_epoch(epoch, val_acc)` is called after each epoch.
    """
    import torch

    from .config import load_study_data
    from .data import resize
    from .model import build_model
    from .train import fit, resolve_device

    dev = resolve_device(device if device != "auto" else cfg.device)
    data = load_study_data(cfg, dev, train_limit=None)
    recipe = dataclasses.replace(cfg.recipe, epochs=epochs)
    run_data = resize(data, spec.input_size) if spec.input_size != data.size else data
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    result = fit(model, run_data, recipe, on_epoch=on_epoch, eval_test=eval_test,
                 progress=progress, checkpoint=checkpoint)
    return model, result, data


def fidelity_points(done: pd.DataFrame, top: int) -> list[dict[str, Any]]:
    """K search-front points and K baseline points, each spread evenly over MAdds.

    Each architecture enters once: the base network that anchors several baseline families (or
    a search point that equals a baseline) would otherwise be retrained under several names and
    enter tau as ties.
    """
    points: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(source: str, name: str, r: Any) -> None:
        key = _identity(r.spec)
        if key not in seen:
            seen.add(key)
            points.append({"source": source, "name": name, "spec": r.spec, "madds": int(r.madds),
                           "params": int(r.params) if r.params == r.params else None,
                           "proxy_acc": float(r.val_acc)})

    search = front(done[done.family == SEARCH])
    for _, r in _spread(search, top).iterrows():
        add(SEARCH, f"trial {int(r.number)}", r)
    base = done[~done.family.isin(SEARCH_FAMILIES)]
    if not base.empty:
        means = seed_means(base).merge(
            base[base.seed == 0][["family", "multiplier", "spec", "label", "params"]],
            on=["family", "multiplier"], how="inner")
        means = means[~means.spec.map(_identity).duplicated()]
        for _, r in _spread(means.sort_values("madds"), top).iterrows():
            add(r.family, r.label, r)
    return points


def _identity(spec: str) -> str:
    """An architecture's identity: its spec JSON without the name."""
    data = json.loads(spec)
    data.pop("name", None)
    return json.dumps(data, sort_keys=True)


def _spread(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """k rows evenly spaced over a frame sorted by MAdds (all of them when there are fewer)."""
    df = df.sort_values("madds").reset_index(drop=True)
    if len(df) <= k:
        return df
    idx = sorted({round(i * (len(df) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(df) - 1]
    return df.iloc[idx]


def verdict(tau: float, p_value: float, n: int, tau_madds: float = math.nan) -> str:
    """What a reader may conclude from the proxy's rank agreement (and MAdds' own)."""
    if n < 4 or math.isnan(tau):
        return "Too few architectures to judge the proxy; retrain more (--top)."
    if not math.isnan(tau_madds) and tau <= tau_madds:
        return (f"The proxy ranks the architectures no better than counting MAdds does "
                f"(tau {tau:.2f} against {tau_madds:.2f} for MAdds alone): its accuracies add no "
                "evidence beyond cost. Lengthen the proxy (more epochs or images).")
    if tau >= 0.6 and p_value < 0.05:
        return "The proxy ranks architectures as the longer runs do: its front is evidence."
    if tau < 0.3 or p_value >= 0.1:
        return ("The proxy does NOT rank architectures as the longer runs do: the search and "
                "baseline comparison at this proxy budget is not evidence. Lengthen the proxy "
                "(more epochs or images) and search again.")
    return "The proxy agrees only weakly with the longer runs: read its gains with caution."


def run_fidelity(cfg: StudyConfig, top: int, epochs: int, device: str = "auto",
                 print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Retrain the chosen points (resuming finished ones), store and return the fidelity record."""
    from .storage import open_storage

    storage = open_storage(cfg.storage, create=False)
    results = load_results(storage, cfg.name, cfg.storage)
    points = fidelity_points(results.finished, top)
    if not points:
        raise LongRunError(f"study {cfg.name} has no completed trials; run the search first")
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    done: dict[str, Any] = dict(study.user_attrs.get("fidelity_runs") or {})
    pending = {_key(p, epochs): p for p in points if _key(p, epochs) not in done}
    print_fn(f"fidelity of {cfg.name}: {len(points)} architectures, {epochs} epochs each on the "
             f"full training split ({len(points) - len(pending)} already done)")
    for key, acc, seconds in _long_runs(cfg, pending, epochs, device):
        done[key] = {"val_acc": acc, "seconds": seconds}
        study.set_user_attr("fidelity_runs", done)  # each run kept as it finishes
        p = pending[key]
        print_fn(f"  trained {p['source']} {p['name']}: {epochs}-epoch {acc:.4f} ({seconds:.0f} s)")
    for i, p in enumerate(points, 1):
        p["long_acc"] = done[_key(p, epochs)]["val_acc"]
        print_fn(f"  {i}/{len(points)} {p['source']:>8} {p['name']:<22} {p['madds'] / 1e6:7.2f}M  "
                 f"proxy {p['proxy_acc']:.4f}  {epochs}-epoch {p['long_acc']:.4f}")
    long = [p["long_acc"] for p in points]
    tau, p_value = kendall_tau([p["proxy_acc"] for p in points], long)
    tau_madds = kendall_tau([p["madds"] for p in points], long)[0]
    tau_params = kendall_tau([p["params"] or 0 for p in points], long)[0]
    record = {"tau": tau, "p_value": p_value, "n": len(points), "epochs": epochs,
              "tau_madds": tau_madds, "tau_params": tau_params,
              "verdict": verdict(tau, p_value, len(points), tau_madds),
              "points": [{k: v for k, v in p.items() if k != "spec"} for p in points]}
    study.set_user_attr("fidelity", record)
    return record


def _long_runs(cfg: StudyConfig, points: dict[str, dict[str, Any]], epochs: int, device: str
               ) -> Iterator[tuple[str, float, float]]:
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
            yield _long_run(cfg, key, p["spec"], epochs, dev, label=p["name"])
        return
    from joblib import Parallel, delayed

    gpus = 0 if dev == "cpu" else visible_gpus(dataclasses.replace(cfg, device=dev))
    threads = cpu_share(n)
    yield from Parallel(n_jobs=n, backend="loky", return_as="generator_unordered")(
        delayed(_long_run)(cfg, key, p["spec"], epochs, f"cuda:{i % gpus}" if gpus else dev,
                           threads, p["name"])
        for i, (key, p) in enumerate(jobs))


def _long_run(cfg: StudyConfig, key: str, spec: str, epochs: int, device: str,
              threads: int | None = None, label: str = "") -> tuple[str, float, float]:
    """One long run (resumed from its checkpoint if one was stopped); (key, accuracy, seconds).

    Prints a line to stderr after each epoch: a run is hours on CPU, and workers' stderr is the
    terminal's (loky workers inherit it).
    """
    from .checkpoint import checkpoint_path, remove_checkpoint

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by fit, in this worker process
    ckpt = checkpoint_path(cfg.artifacts, study=cfg.name, fidelity=key,
                           recipe=dataclasses.asdict(cfg.recipe), data=[cfg.dataset, cfg.val_size])
    started = time.perf_counter()

    def report(epoch: int, val_acc: float) -> None:
        print(f"  {label or key}: epoch {epoch}/{epochs}, val {val_acc:.4f} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    _, result, _ = retrain(cfg, ArchSpec.from_dict(json.loads(spec)), epochs, device,
                           checkpoint=ckpt, on_epoch=report)
    remove_checkpoint(ckpt)
    return key, result.val_acc, result.seconds


def _key(point: dict[str, Any], epochs: int) -> str:
    import hashlib

    return f"{hashlib.sha1(point['spec'].encode()).hexdigest()[:16]}@{epochs}"
