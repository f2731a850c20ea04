"""A study's results out of storage: trial frames of the search, its control and its baselines.

Reads the study `X` and its siblings `X.random` (random-sampler control) and `X.baseline` from the
study's storage and flattens their trials into one pandas frame, plus the run manifest and the
importance of each search parameter. Torch-free.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..errors import UserError
from ..nn.spec import ArchSpec, SpecError
from ..store.attrs import whole
from ..store.order import stored_order
from ..store.record import SEARCH_FAMILIES, TrialRecord
from ..store.siblings import Sibling
from ..store.storage import stale_numbers
from .calibration import Calibration, summarise

__all__ = ["StudyNotFoundError", "StudyResults", "architecture_summary", "calibration_of",
           "experts_by_block", "load_results", "stored_names", "trials_frame"]

COLUMNS = ["study", "family", "number", "state", "val_acc", "holdout_acc", "madds", "params", "multiplier",
           "seed", "label", "seconds", "images_per_s", "epochs_run", "feasible", "reused_from",
           "copied_from",
           "worker", "fail_reason", "weights_artifact", "confirm_of", "rung", "epochs",
           "train_images", "arch_key", "latency_ms", "latency_ms_p90", "latency_isolated", "arch",
           "spec"]


class StudyNotFoundError(UserError, LookupError):
    """A study that is not in the storage; the message lists the studies that are."""


@dataclass
class StudyResults:
    """Everything a report or an export reads from storage."""

    name: str
    storage: str
    trials: pd.DataFrame  # every trial of the study, its control and baselines, one row each
    confirmations: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))
    manifest: dict[str, Any] = field(default_factory=dict)
    importances: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    studies: list[str] = field(default_factory=list)
    top_rung: int = 0  # multi-fidelity studies: only this rung's search runs are results
    calibration: dict[str, Any] | None = None  # `calibration.summarise` of X.calibrate

    @property
    def finished(self) -> pd.DataFrame:
        """Completed, feasible trials: the points of every front and statistic."""
        t = self.trials
        done = t[(t.state == "COMPLETE") & t.feasible & t.val_acc.notna()]
        # A search trial that reused an earlier identical architecture adds no evidence; a
        # baseline's shared anchor (the base net under each family) is that family's point.
        # Runs at a lower multi-fidelity rung trained for fewer epochs than anything they would
        # be compared with.
        search = done.family.isin(SEARCH_FAMILIES)
        return done[~(search & (done.reused_from.notna() | (done.rung != self.top_rung)))]

    @property
    def rungs(self) -> pd.DataFrame:
        """Multi-fidelity search runs per (family, rung): epochs, runs, finished, best accuracy."""
        t = self.trials[self.trials.family.isin(SEARCH_FAMILIES) & self.trials.feasible]
        if t.empty or self.top_rung == 0:
            return pd.DataFrame(columns=["family", "rung", "epochs", "runs", "finished", "best_acc"])
        ok = t.state == "COMPLETE"
        return (t.assign(ok=ok, acc=t.val_acc.where(ok))
                .groupby(["family", "rung"], sort=True)
                .agg(epochs=("epochs", "max"), runs=("number", "size"), finished=("ok", "sum"),
                     best_acc=("acc", "max")).reset_index())

    @property
    def confirmed(self) -> pd.DataFrame:
        """Completed confirmation runs (family: the source, `confirm_of`: the front trial)."""
        c = self.confirmations
        return c[(c.state == "COMPLETE") & c.val_acc.notna()]


def architecture_summary(spec: dict[str, Any] | None) -> str:
    """One line per network: per stage, repeats x channels and the expert counts, e.g. 's4 2x48 e4,0'."""
    if not spec:
        return ""
    try:
        arch = ArchSpec.from_dict(spec)
    except SpecError:
        return "(unreadable spec)"
    parts = []
    blocks = arch.blocks()
    for s in range(len(arch.stages)):
        mine = [b for b in blocks if b.name.startswith(f"s{s + 1}.")]
        experts = [b.experts for b in mine]
        tag = f" e{','.join(map(str, experts))}" if any(e > 1 for e in experts) else ""
        parts.append(f"s{s + 1} {len(mine)}x{mine[0].out_channels}{tag}")
    res = f"{arch.input_size}px " if arch.input_size else ""
    return res + " | ".join(parts)


def experts_by_block(spec: dict[str, Any] | None) -> dict[str, int]:
    """Expert count of every block ('s4.b1' -> 4; 0 is a static block)."""
    if not spec:
        return {}
    try:
        return {b.name: b.experts for b in ArchSpec.from_dict(spec).blocks()}
    except SpecError:
        return {}


def trials_frame(study: optuna.Study, family: str | None = None) -> pd.DataFrame:
    """One row per trial; `family` names search trials ('search' or 'random'), baselines carry theirs."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    stale = stale_numbers(trials)
    for t in trials:
        r = TrialRecord.of(t.user_attrs)
        if t.number in stale and t.state != TrialState.COMPLETE:
            continue  # a dead or interrupted attempt, queued again as another trial
        values = t.values or r.known_values or [None, None]
        # An over-budget sample trained nothing (stored before skipped trials were PRUNED, it
        # holds the value 0); a skipped duplicate stands for its original's result.
        acc = (None if r.infeasible else values[0]
               if t.state == TrialState.COMPLETE or r.skipped else r.final_acc())
        rows.append({
            "study": study.study_name, "family": r.family or family or SEARCH_FAMILIES[0],
            "number": t.number, "state": t.state.name, "val_acc": acc,
            "holdout_acc": r.holdout_acc,
            "madds": r.madds if r.madds is not None else values[1], "params": r.params,
            "multiplier": r.multiplier, "seed": r.seed, "label": r.baseline_label,
            "seconds": r.seconds, "images_per_s": r.images_per_s, "epochs_run": r.epochs_run,
            "feasible": not r.infeasible, "reused_from": r.reused_from,
            "copied_from": r.copied_from, "worker": r.worker,
            "fail_reason": r.fail_reason, "weights_artifact": r.weights_artifact,
            "confirm_of": r.confirm_of, "rung": r.rung, "epochs": r.epochs,
            "train_images": r.train_images, "arch_key": r.arch_key,
            "latency_ms": r.latency_ms, "latency_ms_p90": r.latency_ms_p90,
            "latency_isolated": r.latency_isolated,
            "arch": architecture_summary(r.spec),
            "spec": json.dumps(r.spec, sort_keys=True) if r.spec else "",
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("val_acc", "holdout_acc", "madds", "params", "multiplier", "seconds", "images_per_s",
                "reused_from", "confirm_of", "epochs", "train_images", "latency_ms",
                "latency_ms_p90"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["feasible"] = df["feasible"].astype(bool)
    df["rung"] = df["rung"].astype(int)
    return df


def _importances(study: optuna.Study, rung: int = 0) -> dict[str, float]:
    """Importance of each search parameter for val accuracy (Optuna's default evaluator).

    Only trained, feasible trials count (of a multi-fidelity search: its top rung's).
    """
    records = ((t, TrialRecord.of(t.user_attrs))
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    keep = [t for t, r in records if not r.infeasible and r.reused_from is None and r.rung == rung]
    if len(keep) < 4:
        return {}
    # A copy in memory with only the trials that were trained: over-budget trials score 0 by
    # construction and would make "which choices blow the budget" look like accuracy.
    copy = optuna.create_study(directions=["maximize", "minimize"])
    copy.add_trials(keep)
    try:
        # Optuna 5's default evaluator (PED-ANOVA) ranks parameters by how they reach *low*
        # target values: give it the validation error.
        with warnings.catch_warnings():  # its reminder about low values: heeded above
            warnings.simplefilter("ignore", UserWarning)
            out = optuna.importance.get_param_importances(copy,
                                                          target=lambda t: 1.0 - t.values[0])
    except (RuntimeError, ValueError):  # too few trials in the common search space
        return {}
    # Ties (often several zeros) in name order: Optuna's order for them varies between runs.
    return dict(sorted(((k, float(v)) for k, v in out.items() if not math.isnan(v)),
                       key=lambda kv: (-kv[1], kv[0])))


def stored_names(storage: optuna.storages.BaseStorage, name: str, url: str = "") -> set[str]:
    """The names of the storage's studies; StudyNotFoundError (listing them) without `name`."""
    names = {s.study_name for s in storage.get_all_studies()}
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise StudyNotFoundError(f"study {name!r} is not in storage {url or storage} (studies there: "
                          f"{known}); run `condconv-nas search` first")
    return names


def load_results(storage: optuna.storages.BaseStorage, name: str, url: str = "") -> StudyResults:
    """The study `name` and its siblings `name.random` and `name.baseline`, as frames."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = stored_names(storage, name, url)
    frames, manifest, studies = [], {}, []
    importances: dict[str, float] = {}
    fidelity = None
    top_rung = 0
    search, control = SEARCH_FAMILIES
    confirmations = pd.DataFrame(columns=COLUMNS)
    if Sibling.CONFIRM.of(name) in names:
        studies.append(Sibling.CONFIRM.of(name))
        confirmations = trials_frame(optuna.load_study(study_name=Sibling.CONFIRM.of(name),
                                                       storage=storage))
    for sibling, family in ((name, search), (Sibling.RANDOM.of(name), control),
                            (Sibling.BASELINE.of(name), None)):
        if sibling not in names:
            continue
        study = optuna.load_study(study_name=sibling, storage=storage)
        studies.append(sibling)
        frames.append(trials_frame(study, family))
        if family == search:
            manifest = dict(whole(study.user_attrs, "config") or {})
            manifest["madds_convention"] = study.user_attrs.get("madds_convention", "")
            manifest["preprocess"] = whole(study.user_attrs, "preprocess")
            order = stored_order(study)  # whether a rerun of the file gives these trials
            manifest["search_order"] = None if order is None else order.describe()
            top_rung = len((manifest.get("multifidelity") or {}).get("rungs") or [0]) - 1
            importances = _importances(study, top_rung)
            fidelity = whole(study.user_attrs, "fidelity")
            first = next((r for r in (TrialRecord.of(t.user_attrs)
                                      for t in study.get_trials(deepcopy=False)) if r.versions),
                         None)
            if first is not None:
                manifest["versions"] = first.versions
                manifest["device"] = first.device
        elif family is None:
            manifest["baselines"] = whole(study.user_attrs, "config", {}).get("baselines")
    calibration = None
    if Sibling.CALIBRATE.of(name) in names:
        studies.append(Sibling.CALIBRATE.of(name))
        calibration = calibration_of(optuna.load_study(study_name=Sibling.CALIBRATE.of(name),
                                                       storage=storage))
    trials = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return StudyResults(name=name, storage=url, trials=trials, confirmations=confirmations,
                        manifest=manifest, importances=importances, fidelity=fidelity,
                        studies=studies, top_rung=top_rung, calibration=calibration)


def calibration_of(study: optuna.Study) -> dict[str, Any] | None:
    """The calibration summary of a study `X.calibrate` (None before its ladder is stored)."""
    settings = whole(study.user_attrs, "calibration")
    if settings is None:
        return None
    from ..store.settings import sibling_runs

    cal = Calibration.from_dict(settings)
    runs = trials_frame(study)
    runs = runs[(runs.state == "COMPLETE") & runs.val_acc.notna()]
    # Every run at the reference budget, its siblings' too (baseline seeds, confirmations): one
    # per architecture and seed index (a run trained twice is the same run).
    seen: dict[tuple[str, int], float] = {}
    for _, t, r, epochs in sibling_runs(study, include_self=True):
        if (epochs, r.train_images) == cal.reference and r.arch_key:
            seen.setdefault((r.arch_key, r.seed), float(t.values[0]))
    replicates = pd.DataFrame([{"arch_key": k, "seed": s, "val_acc": v}
                               for (k, s), v in seen.items()],
                              columns=["arch_key", "seed", "val_acc"])
    return summarise(runs, cal, replicates)
