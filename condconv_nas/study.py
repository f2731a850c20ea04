"""Studies: config files, storage, samplers, the objective, workers, resume and early stopping."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ._version import __version__
from .baselines import FAMILIES, baseline_grid
from .cost import CONVENTION, count_cost
from .pareto import pareto_front
from .space import SearchSpace, SpaceError, load_space, parse_count, read_yaml
from .spec import ArchSpec
from .storage import (
    HEARTBEAT,
    StorageError,
    beating,
    budget_used,
    claim_lock,
    counted,
    fail_and_requeue,
    heartbeat_enabled,
    list_studies,
    open_storage,
    reap_stale,
    stale_numbers,
    watchable_running,
)

__all__ = ["PrunerConfig", "StorageError", "StudyConfig", "StudyError", "join_study", "list_studies",
           "load_study_config", "open_storage", "run_search"]

SAMPLERS = ("tpe", "nsga2", "random")
# TPE's `group` and Study.set_metric_names are marked experimental; both are stable in use here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
_KEYS = {"name", "space", "dataset", "data_dir", "val_size", "train_limit", "recipe", "trials",
         "sampler", "seed", "storage", "workers", "budget_madds", "device", "pruner", "baselines",
         "artifacts", "heartbeat"}



class StudyError(SpaceError):
    """A study file that cannot be used; the message names file, key and reason."""


@dataclass(frozen=True)
class PrunerConfig:
    """Pareto-aware early stopping: stop when k cheaper-or-equal trials were better by then."""

    k: int = 3
    warmup_epochs: int = 1


@dataclass(frozen=True)
class BaselineSettings:
    """Which baseline families to train, grid points per scaling family, and seeds per point."""

    families: tuple[str, ...] = FAMILIES
    points: int = 5
    seeds: int = 2


@dataclass(frozen=True)
class StudyConfig:
    """Everything a search needs, validated."""

    name: str
    space: SearchSpace
    dataset: str
    recipe: Any  # train.Recipe (imported lazily: torch)
    trials: int
    sampler: str = "tpe"
    seed: int = 0
    storage: str = ""
    workers: int = 0  # 0: one per visible GPU (device auto/cuda), else 1
    budget_madds: int = 0
    device: str = "auto"
    data_dir: str | None = None
    val_size: int | None = None
    train_limit: int | None = None
    pruner: PrunerConfig | None = None
    baselines: BaselineSettings = BaselineSettings()
    artifacts: str = ""  # folder of the trained weights of front trials (Optuna artifacts)
    heartbeat: tuple[int, int] = HEARTBEAT  # database storages: beat interval, grace (seconds)
    path: str = ""


def preprocess_of(data) -> dict[str, Any]:
    """How the network's input is made from uint8 images: x = (pixels / 255 - mean) / std."""
    return {"in_channels": data.in_channels, "input_size": data.size, "scale": 1 / 255,
            "mean": list(data.mean), "std": list(data.std), "num_classes": data.num_classes}


def load_study_data(cfg: StudyConfig, device: Any = "cpu", train_limit: Any = "study"):
    """The study's dataset and validation split on `device` (`train_limit` None: every image)."""
    from .data import load_dataset

    limit = cfg.train_limit if train_limit == "study" else train_limit
    return load_dataset(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, split_seed=cfg.seed,
                        train_limit=limit, device=device)


def _int(source: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise StudyError(f"{source}: {key}: must be an integer >= {low}, got {value!r}")
    return value


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file; relative paths are relative to the file."""
    from .train import Recipe, RecipeError

    path = Path(path)
    src = str(path)
    data = read_yaml(path, StudyError)
    if not isinstance(data, dict):
        raise StudyError(f"{src}: must be a mapping with keys {', '.join(sorted(_KEYS))}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise StudyError(f"{src}: {unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
    for key in ("name", "space", "dataset", "trials"):
        if key not in data:
            raise StudyError(f"{src}: {key}: is required")
    name = data["name"]
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise StudyError(f"{src}: name: must be letters, digits, '-', '_' or '.', got {name!r}")
    if not isinstance(data["space"], str):
        raise StudyError(f"{src}: space: must be a path to a space file, got {data['space']!r}")
    space = load_space(_relative(path, data["space"]))
    if not isinstance(data["dataset"], str):
        raise StudyError(f"{src}: dataset: must be a dataset name, got {data['dataset']!r}")
    recipe_data = data.get("recipe") or {}
    if not isinstance(recipe_data, dict):
        raise StudyError(f"{src}: recipe: must be a mapping of recipe fields")
    bad = sorted(set(recipe_data) - set(Recipe.field_names()))
    if bad:
        raise StudyError(f"{src}: recipe.{bad[0]}: unknown key (known: "
                         f"{', '.join(Recipe.field_names())})")
    try:
        recipe = Recipe(**recipe_data)
    except RecipeError as err:
        raise StudyError(f"{src}: {err}") from None
    sampler = data.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise StudyError(f"{src}: sampler: must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    budget = space.budget_madds
    if data.get("budget_madds") is not None:
        budget = parse_count(data["budget_madds"])
        if budget is None or budget <= 0:
            raise StudyError(f"{src}: budget_madds: must be a positive count like 8M, "
                             f"got {data['budget_madds']!r}")
    pruner = None
    if data.get("pruner") is not None:
        p = data["pruner"]
        if not isinstance(p, dict) or set(p) - {"k", "warmup_epochs"}:
            raise StudyError(f"{src}: pruner: must be a mapping with k and warmup_epochs")
        pruner = PrunerConfig(k=_int(src, "pruner.k", p.get("k", 3), 1),
                              warmup_epochs=_int(src, "pruner.warmup_epochs",
                                                 p.get("warmup_epochs", 1), 0))
    baselines = _baseline_settings(src, data.get("baselines"))
    storage = data.get("storage")
    if storage is not None and not isinstance(storage, str):
        raise StudyError(f"{src}: storage: must be a URL or a file path, got {storage!r}")
    if not storage:
        storage = str(path.parent / f"{name}.journal")
    elif "://" not in storage:
        storage = str(_relative(path, storage))
    heartbeat = HEARTBEAT
    if data.get("heartbeat") is not None:
        hb = data["heartbeat"]
        if not isinstance(hb, dict) or set(hb) - {"interval", "grace"}:
            raise StudyError(f"{src}: heartbeat: must be a mapping with interval and grace "
                             "(seconds)")
        heartbeat = (_int(src, "heartbeat.interval", hb.get("interval", HEARTBEAT[0]), 1),
                     _int(src, "heartbeat.grace", hb.get("grace", HEARTBEAT[1]), 1))
        if heartbeat[1] <= heartbeat[0]:
            raise StudyError(f"{src}: heartbeat.grace: must exceed the interval "
                             f"({heartbeat[0]} s), got {heartbeat[1]}")
    artifacts = data.get("artifacts")
    if artifacts is not None and (not isinstance(artifacts, str) or not artifacts):
        raise StudyError(f"{src}: artifacts: must be a folder path, got {artifacts!r}")
    artifacts = str(_relative(path, artifacts) if artifacts else path.parent / f"{name}.artifacts")
    device = data.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise StudyError(f"{src}: device: must be auto, cpu or cuda, got {device!r}")
    data_dir = data.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise StudyError(f"{src}: data_dir: must be a path, got {data_dir!r}")
    dataset = data["dataset"]
    if dataset.startswith("npz:"):
        dataset = "npz:" + str(_relative(path, dataset[4:]))
    return StudyConfig(
        name=name, space=space, dataset=dataset, recipe=recipe,
        trials=_int(src, "trials", data["trials"], 1), sampler=sampler,
        seed=_int(src, "seed", data.get("seed", 0), 0), storage=storage,
        workers=0 if data.get("workers") is None else _int(src, "workers", data["workers"], 1),
        budget_madds=budget,
        device=device, data_dir=str(_relative(path, data_dir)) if data_dir else None,
        val_size=None if data.get("val_size") is None else _int(src, "val_size", data["val_size"], 1),
        train_limit=(None if data.get("train_limit") is None
                     else _int(src, "train_limit", data["train_limit"], 1)),
        pruner=pruner, baselines=baselines, artifacts=artifacts, heartbeat=heartbeat, path=src)


def _baseline_settings(src: str, data: Any) -> BaselineSettings:
    if data is None:
        return BaselineSettings()
    keys = {"families", "points", "seeds"}
    if not isinstance(data, dict) or set(data) - keys:
        raise StudyError(f"{src}: baselines: must be a mapping with keys families, points, seeds")
    families = data.get("families", list(FAMILIES))
    if (not isinstance(families, list) or not families
            or any(f not in FAMILIES for f in families) or len(set(families)) != len(families)):
        raise StudyError(f"{src}: baselines.families: must be a non-empty list of distinct names "
                         f"from {', '.join(FAMILIES)}, got {families!r}")
    return BaselineSettings(families=tuple(families),
                            points=_int(src, "baselines.points", data.get("points", 5), 1),
                            seeds=_int(src, "baselines.seeds", data.get("seeds", 2), 1))


def _relative(study_file: Path, target: str) -> Path:
    p = Path(target).expanduser()
    return p if p.is_absolute() else study_file.parent / p


# --- storage ------------------------------------------------------------------------------------


# --- samplers and objective ---------------------------------------------------------------------


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """tpe (multivariate, grouped for the conditional space), nsga2, or random (the control)."""
    if name == "tpe":
        # Constraints reach the samplers through Trial.set_constraint (Optuna 5).
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
        groups = getattr(self, "_group_decomposed_search_space", None)
        if groups is not None and hasattr(groups, "_search_space"):
            self._group_decomposed_search_space = _IncrementalGroups(groups)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        from optuna.samplers._tpe import sampler as tpe

        original = getattr(tpe, "_split_trials", None)
        if original is None:  # a later Optuna reorganised its internals: plain TPE
            return super().sample_relative(study, trial, search_space)
        memo: dict[tuple, Any] = {}

        def split_once(study_: optuna.Study, trials: list, n_below: int) -> Any:
            # Each group gets a fresh list of the same trials; key on who is in it.
            key = (n_below, *(t.number for t in trials))
            if key not in memo:
                memo[key] = original(study_, trials, n_below)
            return memo[key]

        tpe._split_trials = split_once  # workers are processes: no other thread samples here
        try:
            return super().sample_relative(study, trial, search_space)
        finally:
            tpe._split_trials = original


class _IncrementalGroups:
    """Optuna's group decomposition, folding in each finished trial once (it re-folds all)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: set[int] = set()

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> Any:
        import copy

        states = ((TrialState.COMPLETE, TrialState.PRUNED) if self.inner._include_pruned
                  else (TrialState.COMPLETE,))
        for t in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
            if t.number not in self.seen:  # adding a trial twice never changes the groups
                self.seen.add(t.number)
                self.inner._search_space.add_distributions(t.distributions)
        return copy.deepcopy(self.inner._search_space)


def arch_key(spec: ArchSpec) -> str:
    """Identity of an architecture: the spec without its name."""
    data = spec.to_dict()
    data.pop("name")
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    import torch

    return {"condconv_nas": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "python": sys.version.split()[0]}


def _feasible_done(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not t.user_attrs.get("infeasible")]


class Objective:
    """Sample (or take the queued baseline), count, skip over-budget, reuse duplicates, train."""

    def __init__(self, cfg: StudyConfig, data, device, baseline: bool = False) -> None:
        self.cfg, self.data, self.device, self.baseline = cfg, data, device, baseline
        self.versions = _versions()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, study: optuna.Study, trial: optuna.Trial) -> tuple[float, float]:
        import torch

        from .data import resize
        from .model import build_model
        from .train import fit

        cfg, data = self.cfg, self.data
        if self.baseline:
            if "baseline_spec" not in trial.user_attrs:
                raise RuntimeError("a baseline trial without its spec (queued by an older run?)")
            spec, seed = ArchSpec.from_dict(trial.user_attrs["baseline_spec"]), trial.user_attrs["seed"]
        else:
            spec, seed = cfg.space.sample(trial), 0
        spec = spec.for_input(data.in_channels,
                              spec.input_size if cfg.space.resolution else data.size,
                              data.num_classes)
        cost = count_cost(spec)
        key = arch_key(spec)
        # Each attribute is one synced storage write: keep the list short (the convention and
        # the worker are stored once per study and at claim time).
        attrs = {"spec": spec.to_dict(), "arch_key": key, "madds": cost.madds,
                 "params": cost.params, "device": str(self.device), "versions": self.versions}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if not self.baseline:  # baselines span the range as given; the budget binds the search
            trial.set_constraint("madds_over_budget", float(cost.madds - cfg.budget_madds))
            if cost.madds > cfg.budget_madds:  # constrained out before any training
                trial.set_user_attr("infeasible", True)
                return 0.0, float(cost.madds)
        for done in _feasible_done(study):
            if done.user_attrs.get("arch_key") == key and done.user_attrs.get("seed", 0) == seed:
                for k in ("curve", "seconds", "images_per_s", "epochs_run"):
                    if k in done.user_attrs:
                        trial.set_user_attr(k, done.user_attrs[k])
                trial.set_user_attr("reused_from", done.number)
                return float(done.values[0]), float(cost.madds)
        run_data = resize(data, spec.input_size) if spec.input_size != data.size else data
        # Seed index i: init seed and recipe seed both moved by i; index 0 is the search's own.
        torch.manual_seed(cfg.seed + seed)
        recipe = dataclasses.replace(cfg.recipe, seed=cfg.recipe.seed + seed) if seed else cfg.recipe
        model = build_model(spec)
        curve: list[dict] = []

        def on_epoch(epoch: int, val_acc: float) -> str | None:
            curve.append({"epoch": epoch, "val_acc": val_acc})
            if cfg.pruner and should_prune(study, cost.madds, epoch, val_acc, cfg.pruner):
                return "stop"
            return None

        result = fit(model, run_data, recipe, on_epoch=on_epoch)
        for k, v in (("curve", result.curve), ("seconds", result.seconds),
                     ("images_per_s", result.images_per_s), ("epochs_run", result.epochs_run)):
            trial.set_user_attr(k, v)
        if result.stopped_early:
            raise optuna.TrialPruned(f"pruned at epoch {result.epochs_run}")
        if not self.baseline and _on_front(study, result.val_acc, cost.madds):
            self._keep_weights(trial, model)
        return result.val_acc, float(cost.madds)

    def _keep_weights(self, trial: optuna.Trial, model) -> None:
        """Store the trained weights as an Optuna artifact of the trial (front trials only)."""
        import tempfile

        import torch
        from optuna.artifacts import FileSystemArtifactStore, upload_artifact

        folder = Path(self.cfg.artifacts)
        folder.mkdir(parents=True, exist_ok=True)
        # Contiguous copies: a channels_last state dict loads anywhere, and the file is smaller.
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / f"trial{trial.number}.pt"
            torch.save(state, file)
            artifact = upload_artifact(artifact_store=FileSystemArtifactStore(str(folder)),
                                       file_path=str(file), study_or_trial=trial)
        trial.set_user_attr("weights_artifact", artifact)


def _on_front(study: optuna.Study, acc: float, madds: int) -> bool:
    """Whether (acc, madds) is not dominated by a finished feasible trial of the study."""
    points = [(t.values[0], t.values[1]) for t in _feasible_done(study)]
    return len(points) in pareto_front([*points, (acc, madds)])


def should_prune(study: optuna.Study, madds: int, epoch: int, val_acc: float,
                 pruner: PrunerConfig) -> bool:
    """True when >= k finished trials with MAdds <= ours had a higher val accuracy at this epoch."""
    if epoch <= pruner.warmup_epochs:
        return False
    better = 0
    for t in _feasible_done(study):
        if "reused_from" in t.user_attrs:
            continue  # a repeat of a trained architecture is not another witness
        curve = t.user_attrs.get("curve") or []
        if t.user_attrs.get("madds", float("inf")) <= madds and len(curve) >= epoch:
            better += curve[epoch - 1]["val_acc"] > val_acc
    return better >= pruner.k


# --- running ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block ends, so a trial is never half claimed or half told."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
             for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if caught:
            raise KeyboardInterrupt


def _claim(study: optuna.Study, cfg: StudyConfig, worker: str,
           queued_only: bool = False, poll: float = 2.0) -> optuna.Trial | None:
    """The next trial to run, or None when the study's budget is used.

    While the budget is reached only because other workers' trials are running, wait: if one of
    them dies its trial is queued again and this worker runs it.
    """
    while True:
        trial = None
        try:
            with _deferred_interrupt(), claim_lock(cfg.storage):
                reap_stale(study)
                trials = study.get_trials(deepcopy=False)
                waiting = any(t.state == TrialState.WAITING for t in trials)
                if budget_used(trials) < cfg.trials and (waiting or not queued_only):
                    trial = study.ask()
                    trial.set_user_attr("worker", worker)  # lets others tell if its owner died
                    if heartbeat_enabled(study._storage):
                        study._storage.record_heartbeat(trial._trial_id)
                    if _over_budget(study, trial, cfg.trials):
                        continue  # another machine claimed the last trial first
                    return trial
                if not watchable_running(study):
                    return None  # done (baselines run what was queued, never a sampled trial)
        except KeyboardInterrupt:  # Ctrl-C held until the claim finished: give the trial back
            if trial is not None:
                with _deferred_interrupt():
                    fail_and_requeue(study, study._storage.get_trial(trial._trial_id),
                                     "interrupted (Ctrl-C) as it was claimed; queued again")
            raise
        time.sleep(poll)


def _over_budget(study: optuna.Study, trial: optuna.Trial, total: int) -> bool:
    """On a database, count-then-ask is not atomic across machines: recount after asking.

    The trials that use the budget, by number, are kept up to `total`; a later one gives itself
    up (failed and stale: it never ran). Local storages hold the claim lock, so it never fires.
    """
    trials = study.get_trials(deepcopy=False)
    stale = stale_numbers(trials)
    kept = sorted(t.number for t in trials if counted(t, stale))
    if trial.number in kept[:total]:
        return False
    study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "claimed past the budget")
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return True


def _front_size(study: optuna.Study) -> int:
    done = [t for t in _feasible_done(study) if "reused_from" not in t.user_attrs]
    return len(pareto_front([(t.values[0], t.values[1]) for t in done]))


def run_worker(cfg: StudyConfig, index: int = 0, workers: int = 1,
               print_fn: Callable[[str], None] = print, baseline: bool = False,
               salt: int = 0, data=None) -> int:
    """One worker: claim trials until the study's budget is used; returns trials it finished.

    With `baseline`, `cfg` is the baseline study's config and the worker runs queued points only.
    """
    from .train import NonFiniteLossError, resolve_device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(cfg.device)
    storage = open_storage(cfg.storage, heartbeat=cfg.heartbeat)
    # seed + worker index; `salt` (from the caller) moves resumed and joining runs to new sequences.
    study = optuna.load_study(study_name=cfg.name, storage=storage,
                              sampler=make_sampler(cfg.sampler, (cfg.seed + index + salt) % 2**32,
                                                   cfg.trials))
    if data is None or data.train.images.device != device:
        data = load_study_data(cfg, device)
    if "preprocess" not in study.user_attrs:  # what an exported model expects of its input
        study.set_user_attr("preprocess", preprocess_of(data))
    objective = Objective(cfg, data, device, baseline=baseline)
    finished = 0
    while (trial := _claim(study, cfg, objective.worker, queued_only=baseline)) is not None:
        if baseline and "baseline_spec" not in trial.user_attrs:
            # Another machine took the last queued point between our look and our ask.
            with _deferred_interrupt():
                trial.set_user_attr("stale", True)
                study.tell(trial, state=TrialState.FAIL)
            break
        t0 = time.perf_counter()
        state, values, note = TrialState.COMPLETE, None, ""
        try:
            with beating(study._storage, trial._trial_id):
                values = objective(study, trial)
        except optuna.TrialPruned as err:
            state, note = TrialState.PRUNED, str(err)
        except KeyboardInterrupt:
            with _deferred_interrupt():
                frozen = study._storage.get_trial(trial._trial_id)
                fail_and_requeue(study, frozen, "interrupted (Ctrl-C); queued to run again")
            raise
        except (NonFiniteLossError, RuntimeError, ValueError, MemoryError) as err:
            state, note = TrialState.FAIL, f"{type(err).__name__}: {err}"
            trial.set_user_attr("fail_reason", note[:500])
        with _deferred_interrupt():
            if state == TrialState.COMPLETE:
                study.tell(trial, values)
            else:
                study.tell(trial, state=state)
        finished += 1
        frozen = study._storage.get_trial(trial._trial_id)
        attrs = frozen.user_attrs
        acc = ("over budget" if attrs.get("infeasible") else
               f"acc {frozen.values[0]:.4f}" if frozen.values else
               f"acc {attrs['curve'][-1]['val_acc']:.4f}" if attrs.get("curve") else "acc -")
        reused = f" (same as #{attrs['reused_from']})" if "reused_from" in attrs else ""
        if baseline:
            reused = f"  {attrs['baseline_label']} seed {attrs['seed']}" + reused
        print_fn(f"trial {trial.number:4d}  {attrs.get('madds', 0) / 1e6:8.2f}M MAdds  {acc}  "
                 f"{state.name.lower()}{reused}  {time.perf_counter() - t0:6.1f}s  "
                 f"front {_front_size(study)}" + (f"  [{note[:120]}]" if note else ""))
    return finished


def _worker_entry(cfg: StudyConfig, index: int, workers: int, env: dict[str, str],
                  baseline: bool, salt: int) -> int:
    os.environ.update(env)  # before torch is imported in this process
    return run_worker(cfg, index, workers, print_fn=lambda s: print(s, flush=True),
                      baseline=baseline, salt=salt)


def _open_study(cfg: StudyConfig, kind: str) -> optuna.Study:
    """Create or load the study; store its kind, config and the MAdds convention once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.storage, heartbeat=cfg.heartbeat)
    study = optuna.create_study(study_name=cfg.name, storage=storage, load_if_exists=True,
                                directions=["maximize", "minimize"])
    if study.user_attrs.get("madds_convention") != CONVENTION:
        study.set_metric_names(["val_acc", "madds"])
        study.set_user_attr("madds_convention", CONVENTION)
        study.set_user_attr("kind", kind)
        study.set_user_attr("config", _manifest(cfg))
    return study


def _manifest(cfg: StudyConfig) -> dict[str, Any]:
    """What a reader of the study needs to know about how it ran (JSON-safe)."""
    return {"study_file": cfg.path, "space": cfg.space.source, "base": cfg.space.base.name,
            "dataset": cfg.dataset, "train_limit": cfg.train_limit, "val_size": cfg.val_size,
            "split_seed": cfg.seed, "seed": cfg.seed, "sampler": cfg.sampler,
            "budget_madds": cfg.budget_madds, "recipe": dataclasses.asdict(cfg.recipe),
            "trials": cfg.trials, "pruner": dataclasses.asdict(cfg.pruner) if cfg.pruner else None,
            "baselines": dataclasses.asdict(cfg.baselines), "artifacts": cfg.artifacts}


def run_search(cfg: StudyConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Create or resume the study, then run its workers to the total trial budget."""
    cfg = resolve_workers(cfg)
    # A dataset that cannot be read is reported before the study is created or touched; a single
    # in-process worker then trains on this very copy.
    data = load_study_data(cfg)
    study = _open_study(cfg, "random-control" if cfg.name.endswith(".random") else "search")
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
    return {"ran": _run_workers(cfg, print_fn, baseline=False, salt=1009 * len(trials), data=data)}


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
    return {"ran": _run_workers(cfg, print_fn, baseline=baseline, salt=salt)}


def _visible_gpus(cfg: StudyConfig) -> int:
    """GPUs a study may use: none for a CPU study, else every visible one."""
    if cfg.device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def resolve_workers(cfg: StudyConfig) -> StudyConfig:
    """The config with its worker count settled: when unset, one per visible GPU, else one."""
    return cfg if cfg.workers else dataclasses.replace(cfg, workers=max(1, _visible_gpus(cfg)))


def _run_workers(cfg: StudyConfig, print_fn: Callable[[str], None], baseline: bool,
                 salt: int = 0, data=None) -> int:
    if cfg.workers == 1:
        return run_worker(cfg, 0, 1, print_fn, baseline=baseline, salt=salt, data=data)
    from joblib import Parallel, delayed

    envs = _worker_envs(cfg)
    ran = Parallel(n_jobs=cfg.workers, backend="loky")(
        delayed(_worker_entry)(cfg, i, cfg.workers, envs[i], baseline, salt)
        for i in range(cfg.workers))
    return sum(ran)


def baseline_study_config(cfg: StudyConfig) -> StudyConfig:
    """The sibling study `X.baseline`: same storage, data, recipe and seeds; no pruner."""
    return dataclasses.replace(cfg, name=f"{cfg.name}.baseline", pruner=None, sampler="random")


def control_study_config(cfg: StudyConfig) -> StudyConfig:
    """The sibling study `X.random`: the same search with the random sampler, the control."""
    return dataclasses.replace(cfg, name=f"{cfg.name}.random", sampler="random")


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
    study = _open_study(bcfg, "baseline")
    stale = reap_stale(study)
    if stale:
        print_fn(f"{stale} trial(s) left running by a stopped run: marked failed, queued again")
    with _deferred_interrupt(), claim_lock(bcfg.storage):
        have = {(t.user_attrs.get("baseline_label"), t.user_attrs.get("seed"))
                for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("stale")}
        queued = 0
        for point in grid:
            for seed in range(settings.seeds):
                if (point.label, seed) in have:
                    continue
                study.enqueue_trial({}, skip_if_exists=False, user_attrs={
                    "baseline_spec": point.spec.to_dict(), "family": point.family,
                    "multiplier": point.multiplier, "seed": seed, "baseline_label": point.label})
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
    return {"ran": _run_workers(bcfg, print_fn, baseline=True, data=data)}


def _worker_envs(cfg: StudyConfig) -> list[dict[str, str]]:
    """One GPU per worker when there are GPUs, else the CPU threads split between workers."""
    gpus = _visible_gpus(cfg)
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus)} for i in range(cfg.workers)]
    threads = max(1, len(os.sched_getaffinity(0)) // cfg.workers)
    return [{"OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
            for _ in range(cfg.workers)]


def with_overrides(cfg: StudyConfig, **changes: Any) -> StudyConfig:
    """The config with CLI overrides applied (None leaves a field as it is)."""
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
