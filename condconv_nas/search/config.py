"""Study files: `StudyConfig` and its parts, read and validated once, and the sibling studies' configs.

Torch- and Optuna-free: the study's dataset is loaded lazily by `load_study_data`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.calibration import Calibration
from ..errors import StudyError
from ..store.siblings import Sibling
from ..store.storage import HEARTBEAT
from ..train.recipe import Recipe, RecipeError
from .baselines import FAMILIES
from .multifidelity import LEARN_FROM, MultiFidelity
from .space import SearchSpace, load_space, parse_count, read_yaml

if TYPE_CHECKING:
    import torch

    from ..train.data import Dataset

__all__ = ["HEARTBEAT", "OBJECTIVES", "SAMPLERS", "BaselineSettings", "MeasureSettings",
           "PrunerConfig", "StudyConfig", "StudyError",
           "baseline_study_config", "calibrate_study_config", "confirm_study_config", "control_study_config",
           "load_study_config", "load_study_data", "preprocess_of", "study_config_of",
           "with_overrides"]

SAMPLERS = ("tpe", "nsga2", "random")
_KEYS = {"name", "space", "dataset", "data_dir", "val_size", "train_limit", "recipe", "trials",
         "sampler", "seed", "storage", "workers", "budget_madds", "device", "pruner", "baselines",
         "artifacts", "heartbeat", "confirm", "multifidelity", "calibration", "measure",
         "objectives", "workers_per_gpu", "holdout", "holdout_size", "reproducible", "image_size"}
OBJECTIVES = ("madds", "latency")  # the cost axis searched against accuracy


@dataclass(frozen=True)
class PrunerConfig:
    """Pareto-aware early stopping: stop when k cheaper-or-equal trials were better by then."""

    k: int = 3
    warmup_epochs: int = 1


@dataclass(frozen=True)
class MeasureSettings:
    """Latency taken of every trained architecture, in isolation (see latency.py, isolation.py)."""

    device: str = "cpu"
    batch: int = 1
    threads: int = 1
    repeats: int = 5  # interleaved rounds of 10 timed calls
    timeout: int = 300  # seconds to wait for other workers to pause before measuring anyway


@dataclass(frozen=True)
class BaselineSettings:
    """Which baseline families to train, grid points per scaling family, and seeds per point."""

    families: tuple[str, ...] = FAMILIES
    points: int = 5
    seeds: int = 3


@dataclass(frozen=True)
class StudyConfig:
    """Everything a search needs, validated."""

    name: str
    space: SearchSpace
    dataset: str
    recipe: Recipe
    trials: int
    sampler: str = "tpe"
    seed: int = 0
    storage: str = ""
    workers: int = 0  # 0: workers_per_gpu on each visible GPU (device auto/cuda), else 1
    workers_per_gpu: int = 1  # launch-bound proxies: several trials share a GPU
    budget_madds: int = 0
    device: str = "auto"
    data_dir: str | None = None
    val_size: int | None = None
    train_limit: int | None = None
    image_size: int | None = None  # imagefolder datasets: every image resized to this square size
    pruner: PrunerConfig | None = None
    baselines: BaselineSettings = BaselineSettings()
    artifacts: str = ""  # folder of the trained weights of front trials (Optuna artifacts)
    heartbeat: tuple[int, int] = HEARTBEAT  # database storages: beat interval, grace (seconds)
    confirm_seeds: int = 3  # fresh seeds per front architecture in `confirm`
    multifidelity: MultiFidelity | None = None  # successive halving over epochs (MO-ASHA)
    calibration: Calibration = Calibration()
    measure: MeasureSettings | None = None
    objective: str = "madds"  # the second objective: "madds" or measured "latency" (ms)
    # The split claims are scored on: "carve" (holdout_size training images, default as many as
    # validation, disjoint from validation and training), "test" (the dataset's test split), or
    # None for a study stored before holdout splits existed (its layout has none).
    holdout: str | None = "carve"
    holdout_size: int | None = None
    # Trial n decided by the seed, n and the results of trials 0..n-workers (reproducible.py);
    # False samples from whatever has finished (more throughput, no rerun gives the same trials).
    reproducible: bool = True
    path: str = ""

    @property
    def data_holdout(self) -> int | str | None:
        """The holdout argument of `data.load_dataset` for this study."""
        if self.holdout == "carve":
            return self.holdout_size or "val"
        return self.holdout


def preprocess_of(data: Dataset) -> dict[str, Any]:
    """How the network's input is made from uint8 images: x = (pixels / 255 - mean) / std."""
    return {"in_channels": data.in_channels, "input_size": data.size, "scale": 1 / 255,
            "mean": list(data.mean), "std": list(data.std), "num_classes": data.num_classes}


def load_study_data(cfg: StudyConfig, device: str | torch.device = "cpu",
                    train_limit: int | None | str = "study") -> Dataset:
    """The study's dataset and validation split on `device` (`train_limit` None: every image).

    A recipe batch larger than the training split is an error here, before any study is touched:
    otherwise every trial would fail on it and spend the trial budget.
    """
    from ..train.data import load_dataset
    from ..train.train import check_batch_size

    limit = cfg.train_limit if train_limit == "study" else train_limit
    data = load_dataset(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, split_seed=cfg.seed,
                        train_limit=limit, device=device, holdout=cfg.data_holdout,
                        image_size=cfg.image_size)
    check_batch_size(cfg.recipe, data)
    return data


def _int(source: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise StudyError(f"{source}: {key}: must be an integer {bound}, got {value!r}")
    return value


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file; relative paths are relative to the file."""
    path = Path(path)
    return study_config_of(read_yaml(path, StudyError), path, str(path))


def study_config_of(data: Any, path: Path, src: str) -> StudyConfig:
    """Validate a study file's contents (`data`, as parsed) with the one-line errors of a file:
    `path` is where the file is (or would be: relative paths and the default storage are
    relative to its folder), `src` what errors name it."""
    if not isinstance(data, dict):
        raise StudyError(f"{src}: must be a mapping with keys {', '.join(sorted(_KEYS))}")
    unknown = sorted(set(data) - _KEYS, key=str)  # str: YAML keys may be numbers
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
    bad = sorted(set(recipe_data) - set(Recipe.field_names()), key=str)
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
    multifidelity = _multifidelity(src, data.get("multifidelity"))
    if multifidelity is not None:
        if pruner is not None:
            raise StudyError(f"{src}: pruner: cannot be combined with multifidelity (successive "
                             "halving decides which runs go on); remove one of them")
        if "epochs" in recipe_data and recipe.epochs != multifidelity.max_epochs:
            raise StudyError(f"{src}: recipe.epochs: must equal multifidelity.max_epochs "
                             f"({multifidelity.max_epochs}, the top rung that baselines and "
                             f"confirmation train at), got {recipe.epochs}")
        recipe = dataclasses.replace(recipe, epochs=multifidelity.max_epochs)
    calibration = _calibration(src, data.get("calibration"))
    measure = _measure(src, data.get("measure"))
    objective = _objective(src, data.get("objectives"), measure)
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
    confirm = data.get("confirm")
    if confirm is not None and (not isinstance(confirm, dict) or set(confirm) - {"seeds"}):
        raise StudyError(f"{src}: confirm: must be a mapping with seeds (fresh seeds per front "
                         "architecture)")
    confirm_seeds = _int(src, "confirm.seeds", (confirm or {}).get("seeds", 3), 2)
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
    holdout = data.get("holdout", "carve")
    if holdout not in ("carve", "test"):
        raise StudyError(f"{src}: holdout: must be carve (holdout_size training images, disjoint "
                         f"from validation) or test (the dataset's test split), got {holdout!r}")
    holdout_size = (None if data.get("holdout_size") is None
                    else _int(src, "holdout_size", data["holdout_size"], 1))
    if holdout == "test" and holdout_size is not None:
        raise StudyError(f"{src}: holdout_size: the test split is used whole with holdout: test; "
                         "remove one of the two keys")
    reproducible = data.get("reproducible", True)
    if not isinstance(reproducible, bool):
        raise StudyError(f"{src}: reproducible: must be true or false, got {reproducible!r}")
    dataset = data["dataset"]
    if dataset.startswith(("npz:", "imagefolder:")):
        kind, _, where = dataset.partition(":")
        dataset = f"{kind}:{_relative(path, where)}"
    image_size = (None if data.get("image_size") is None
                  else _int(src, "image_size", data["image_size"], 8, 1024))
    return StudyConfig(
        name=name, space=space, dataset=dataset, recipe=recipe,
        trials=_int(src, "trials", data["trials"], 1), sampler=sampler,
        # torch seeds are 64-bit: a larger seed would fail every trial instead of here.
        seed=_int(src, "seed", data.get("seed", 0), 0, 2 ** 63 - 1), storage=storage,
        workers=0 if data.get("workers") is None else _int(src, "workers", data["workers"], 1),
        workers_per_gpu=_int(src, "workers_per_gpu", data.get("workers_per_gpu", 1), 1),
        budget_madds=budget,
        device=device, data_dir=str(_relative(path, data_dir)) if data_dir else None,
        val_size=None if data.get("val_size") is None else _int(src, "val_size", data["val_size"], 1),
        image_size=image_size,
        train_limit=(None if data.get("train_limit") is None
                     else _int(src, "train_limit", data["train_limit"], 1)),
        pruner=pruner, baselines=baselines, artifacts=artifacts, heartbeat=heartbeat,
        confirm_seeds=confirm_seeds, multifidelity=multifidelity, calibration=calibration,
        measure=measure, objective=objective, holdout=holdout, holdout_size=holdout_size,
        reproducible=reproducible, path=src)


def _measure(src: str, data: Any) -> MeasureSettings | None:
    if data is None:
        return None
    keys = {f.name for f in dataclasses.fields(MeasureSettings)}
    if not isinstance(data, dict) or set(data) - keys:
        raise StudyError(f"{src}: measure: must be a mapping with keys {', '.join(sorted(keys))}, "
                         "e.g. {device: cpu, batch: 1, threads: 1}")
    default = MeasureSettings()
    device = data.get("device", default.device)
    if device not in ("cpu", "cuda"):
        raise StudyError(f"{src}: measure.device: must be cpu or cuda, got {device!r}")
    return MeasureSettings(device=device,
                           batch=_int(src, "measure.batch", data.get("batch", default.batch), 1),
                           threads=_int(src, "measure.threads",
                                        data.get("threads", default.threads), 1),
                           repeats=_int(src, "measure.repeats",
                                        data.get("repeats", default.repeats), 1),
                           timeout=_int(src, "measure.timeout",
                                        data.get("timeout", default.timeout), 0))


def _objective(src: str, data: Any, measure: MeasureSettings | None) -> str:
    if data is None:
        return "madds"
    if (not isinstance(data, list) or len(data) != 2 or data[0] != "accuracy"
            or data[1] not in OBJECTIVES):
        raise StudyError(f"{src}: objectives: must be [accuracy, madds] or [accuracy, latency], "
                         f"got {data!r}")
    if data[1] == "latency" and measure is None:
        raise StudyError(f"{src}: objectives: latency needs a measure key saying how to time it, "
                         "e.g. measure: {device: cpu, batch: 1, threads: 1}")
    return data[1]


def _multifidelity(src: str, data: Any) -> MultiFidelity | None:
    if data is None:
        return None
    keys = {"min_epochs", "max_epochs", "eta", "learn_from"}
    if not isinstance(data, dict) or set(data) - keys or "max_epochs" not in data:
        raise StudyError(f"{src}: multifidelity: must be a mapping with max_epochs and optional "
                         "min_epochs, eta and learn_from, e.g. {min_epochs: 1, max_epochs: 9, "
                         "eta: 3}")
    low = _int(src, "multifidelity.min_epochs", data.get("min_epochs", 1), 1)
    high = _int(src, "multifidelity.max_epochs", data["max_epochs"], 1)
    eta = _int(src, "multifidelity.eta", data.get("eta", 3), 2)
    if high <= low:
        raise StudyError(f"{src}: multifidelity.max_epochs: must exceed min_epochs ({low}) for "
                         f"two rungs or more, got {high}")
    learn = data.get("learn_from", MultiFidelity.learn_from)
    if learn not in LEARN_FROM:
        raise StudyError(f"{src}: multifidelity.learn_from: must be one of "
                         f"{', '.join(LEARN_FROM)}, got {learn!r}")
    return MultiFidelity(min_epochs=low, max_epochs=high, eta=eta, learn_from=learn)


def _images(src: str, key: str, value: Any) -> int | None:
    if value == "all":
        return None
    return _int(src, key, value, 1)


def _calibration(src: str, data: Any) -> Calibration:
    if data is None:
        return Calibration()
    keys = {"epochs", "train_images", "reference", "min_tau", "archs", "min_archs"}
    if not isinstance(data, dict) or set(data) - keys:
        raise StudyError(f"{src}: calibration: must be a mapping with keys {', '.join(sorted(keys))}")
    default = Calibration()

    def images(key: str, value: Any) -> int | float | None:
        # A fraction of the training split is resolved against the split when calibrate runs.
        if isinstance(value, float) and 0 < value <= 1:
            return None if value == 1 else value
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool)):
            return _images(src, key, value)
        raise StudyError(f"{src}: {key}: must be an integer (images), a fraction in (0, 1] of the "
                         f"training split, or all, got {value!r}")

    out = {}
    for key, parse in (("epochs", lambda k, v: _int(src, k, v, 1)), ("train_images", images)):
        values = data.get(key, ["all" if v is None else v for v in getattr(default, key)])
        if not isinstance(values, list) or not values:
            raise StudyError(f"{src}: calibration.{key}: must be a non-empty list, got {values!r}")
        out[key] = tuple(dict.fromkeys(parse(f"calibration.{key}", v) for v in values))
    ref = data.get("reference", {})
    if not isinstance(ref, dict) or set(ref) - {"epochs", "train_images"}:
        raise StudyError(f"{src}: calibration.reference: must be a mapping with epochs and "
                         "train_images (the long run the ladder is judged against)")
    reference = (_int(src, "calibration.reference.epochs", ref.get("epochs", default.reference[0]), 1),
                 images("calibration.reference.train_images", ref.get("train_images", "all")))
    for e in out["epochs"]:
        if e > reference[0]:
            raise StudyError(f"{src}: calibration.epochs: {e} exceeds the reference's "
                             f"{reference[0]} epochs; the reference must be the longest run")
    for n in out["train_images"]:  # a count against a fraction: checked once they are resolved
        if reference[1] is not None and (n is None or (isinstance(n, float) is isinstance(
                reference[1], float) and n > reference[1])):
            raise StudyError(f"{src}: calibration.train_images: {n or 'all'} exceeds the "
                             f"reference's {reference[1]}; the reference must be the largest")
    min_tau = data.get("min_tau", default.min_tau)
    if isinstance(min_tau, bool) or not isinstance(min_tau, (int, float)) or not 0 < min_tau <= 1:
        raise StudyError(f"{src}: calibration.min_tau: must be a number in (0, 1], got {min_tau!r}")
    archs = _int(src, "calibration.archs", data.get("archs", default.archs), 4)
    min_archs = _int(src, "calibration.min_archs", data.get("min_archs", default.min_archs), 4)
    cal = Calibration(epochs=out["epochs"], train_images=out["train_images"], reference=reference,
                      min_tau=float(min_tau), archs=archs, min_archs=min_archs)
    if not cal.ladder():
        raise StudyError(f"{src}: calibration: the ladder has no budget below the reference")
    return cal


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
                            seeds=_int(src, "baselines.seeds", data.get("seeds", 3), 1))


def _relative(study_file: Path, target: str) -> Path:
    p = Path(target).expanduser()
    return p if p.is_absolute() else study_file.parent / p


def with_overrides(cfg: StudyConfig, **changes: Any) -> StudyConfig:
    """The config with CLI overrides applied (None leaves a field as it is)."""
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def baseline_study_config(cfg: StudyConfig) -> StudyConfig:
    """The sibling study `X.baseline`: same storage, data, recipe and seeds; no pruner."""
    return dataclasses.replace(cfg, name=Sibling.BASELINE.of(cfg.name), pruner=None, sampler="random")


def confirm_study_config(cfg: StudyConfig) -> StudyConfig:
    """The sibling study `X.confirm`: front architectures retrained with fresh seeds."""
    return dataclasses.replace(cfg, name=Sibling.CONFIRM.of(cfg.name), pruner=None, sampler="random")


def calibrate_study_config(cfg: StudyConfig) -> StudyConfig:
    """The sibling study `X.calibrate`: the proxy-budget ladder, on every training image.

    Each run carries its own epochs and image count; the reference budget's epochs stand in
    the stored recipe, so adopting a recommended budget does not invalidate the calibration.
    """
    return dataclasses.replace(cfg, name=Sibling.CALIBRATE.of(cfg.name), pruner=None, sampler="random",
                               train_limit=None, multifidelity=None,
                               recipe=dataclasses.replace(cfg.recipe,
                                                          epochs=cfg.calibration.reference[0]))


def control_study_config(cfg: StudyConfig) -> StudyConfig:
    """The sibling study `X.random`: the same search with the random sampler, the control."""
    return dataclasses.replace(cfg, name=Sibling.RANDOM.of(cfg.name), sampler="random")
