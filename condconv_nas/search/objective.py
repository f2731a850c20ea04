"""The objective of a trial: sample (or take the queued baseline), count, skip, reuse, train, store."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from .._version import __version__
from ..analysis.pareto import pareto_front
from ..nn.cost import count_cost
from ..nn.spec import ArchSpec, arch_key
from ..store.optuna_internals import set_trial_params
from ..store.record import (
    FAMILY_ORDER,
    HOLDOUT_FIELDS,
    RESULT_FIELDS,
    TrialRecord,
    pack_bits,
    write_record,
)
from ..train.isolation import Isolation
from .config import PrunerConfig, StudyConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..train.data import Dataset
    from ..train.recipe import Recipe

__all__ = ["QUEUED_MEANINGS", "Objective", "SkippedTrial", "arch_key", "feasible_done",
           "front_size", "queued_params", "should_prune", "sibling_run"]


class SkippedTrial(optuna.TrialPruned):
    """A sampled trial stored PRUNED without training: over the budget, or already trained.

    Optuna's own tools then count only trained architectures; the sampler is shown the values
    the record keeps (`known_values`, see `learnfrom.as_sampled`), so it learns what it did
    when such trials were stored COMPLETE.
    """


def _versions() -> dict[str, str]:
    import torch

    return {"condconv_nas": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "python": sys.version.split()[0]}


def feasible_done(study: optuna.Study, rung: int | None = None) -> list[optuna.trial.FrozenTrial]:
    """Completed trials of the study that were trained (within the MAdds budget), at `rung` if set."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not (r := TrialRecord.of(t.user_attrs)).infeasible and rung in (None, r.rung)]


def front_size(study: optuna.Study, rung: int | None = None) -> int:
    """Points on the study's front (at `rung` if set), counting each trained architecture once."""
    done = [t for t in feasible_done(study, rung)
            if TrialRecord.of(t.user_attrs).reused_from is None]
    return len(pareto_front([(t.values[0], t.values[1]) for t in done]))


class Objective:
    """Sample (or take the queued baseline), count, skip over-budget, reuse duplicates, train."""

    def __init__(self, cfg: StudyConfig, data: Dataset, device: torch.device,
                 baseline: bool = False) -> None:
        self.cfg, self.data, self.device, self.baseline = cfg, data, device, baseline
        self.versions = _versions()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.isolation = Isolation() if cfg.measure else None
        from ..nn import pathtune

        # Paths differ in float rounding: a study trains with the choices it stored, whoever
        # timed them (its sibling studies share them through the artifacts folder).
        if cfg.artifacts:
            pathtune.use_study_file(Path(cfg.artifacts) / "paths.json")
        if cfg.measure and cfg.measure.device == "cuda":
            from ..train.train import resolve_device

            resolve_device("cuda")  # no GPU: one error now, not a failed measurement per trial

    def __call__(self, study: optuna.Study, trial: optuna.Trial,
                 seen: optuna.Study | None = None) -> tuple[float, float]:
        """Train the trial's architecture; returns (validation accuracy, MAdds or latency ms).

        `seen` (a reproducible search) holds the finished trials that the duplicate check, the
        pruner and the choice to keep weights may read; else they read the study as it stands.
        """
        seen = study if seen is None else seen
        import torch

        from ..nn.model import build_model
        from ..train.checkpoint import checkpoint_path, remove_checkpoint
        from ..train.data import Split, resize
        from ..train.train import NonFiniteLossError, fit

        cfg, data = self.cfg, self.data
        queued = TrialRecord.of(trial.user_attrs)
        if self.baseline:
            if queued.baseline_spec is None:
                raise RuntimeError("a baseline trial without its spec (queued by an older run?)")
            spec, seed = ArchSpec.from_dict(queued.baseline_spec), queued.seed
        else:
            spec, seed = cfg.space.sample(trial), 0
        spec = cfg.space.for_data(spec, data.in_channels, data.size, data.num_classes)
        cost = count_cost(spec)
        key = arch_key(spec)
        # The training budget: a multi-fidelity rung's epochs, a calibration run's, or the recipe's.
        mf = cfg.multifidelity if not self.baseline else None
        epochs = mf.rungs[queued.rung] if mf else queued.epochs or cfg.recipe.epochs
        images = queued.train_images
        # Each attribute is one synced storage write: keep the list short (the convention and
        # the worker are stored once per study and at claim time).
        write_record(trial, spec=spec.to_dict(), arch_key=key, madds=cost.madds,
                     params=cost.params, device=str(self.device), versions=self.versions,
                     **({"rung": queued.rung, "epochs": epochs} if mf else {}))
        if self.baseline:  # every plot of a baseline or confirmation study gets its axes
            set_trial_params(trial, queued_params(queued))
        else:  # baselines span the range as given; the budget binds the search
            trial.set_constraint("madds_over_budget", float(cost.madds - cfg.budget_madds))
            if cost.madds > cfg.budget_madds:  # constrained out before any training
                known = [0.0, float(cost.madds) if cfg.objective == "madds" else math.inf]
                write_record(trial, infeasible=True, known_values=known, skipped=(
                    f"over the MAdds budget ({cost.madds:,} > {cfg.budget_madds:,}): not trained"))
                raise SkippedTrial("over the MAdds budget")
        # Queued runs (baselines, confirmations, controls, calibration: a calibration run may be
        # copied as a baseline point) are scored on the holdout split too; a search trial never
        # sees it.
        holdout = self.baseline and data.holdout is not None and len(data.holdout) > 0
        # The same architecture, seed and budget (as recorded: set only when not the recipe's).
        budget = (epochs if mf else queued.epochs, images)
        for done in feasible_done(seen, queued.rung):
            record = TrialRecord.of(done.user_attrs)
            if (record.arch_key, record.seed, (record.epochs, record.train_images)) == (key, seed, budget):
                reused = {k: getattr(record, k) for k in RESULT_FIELDS if k in done.user_attrs}
                write_record(trial, **reused, reused_from=done.number)
                if self.baseline:  # a family's own point (the base under each family): a result
                    return float(done.values[0]), float(done.values[1])
                write_record(trial, known_values=[float(v) for v in done.values], skipped=(
                    f"the architecture of trial {done.number}, already trained: not trained again"))
                raise SkippedTrial(f"same as trial {done.number}")
        # Seed index i: init seed and recipe seed both moved by i; index 0 is the search's own.
        recipe = dataclasses.replace(cfg.recipe, seed=cfg.recipe.seed + seed, epochs=epochs)
        # The run's identity, so a retry of a killed or interrupted attempt (a new trial) goes on
        # from its last epoch. Kept until the run ends; a non-finite loss would recur: dropped.
        ckpt = checkpoint_path(cfg.artifacts, study=study.study_name, arch=key, seed=seed,
                               images=images, recipe=dataclasses.asdict(recipe),
                               data=[cfg.dataset, cfg.val_size, cfg.train_limit, spec.input_size]
                               # the holdout takes training images (none: the old key)
                               + ([] if cfg.holdout is None else [cfg.data_holdout]))
        # The same run in a sibling study (a calibration's reference run, a baseline point the
        # search samples): its result is copied, not trained again. The trial still counts as
        # its study's own (on fronts, as a pruning witness); it keeps no weights.
        shared = sibling_run(study, key, seed, epochs, images, holdout)
        if shared is not None:
            name, done = shared
            source = TrialRecord.of(done.user_attrs)
            copied = {k: getattr(source, k) for k in RESULT_FIELDS if k in done.user_attrs
                      and (holdout or k not in HOLDOUT_FIELDS)}
            write_record(trial, **copied, copied_from=f"{name}#{done.number}")
            remove_checkpoint(ckpt)  # an attempt cut short before the sibling run finished
            value = (copied.get("latency_ms") if cfg.objective == "latency" else None)
            return float(done.values[0]), float(cost.madds if value is None else value)
        if images is not None:  # the first n training images: what train_limit n would load
            data = dataclasses.replace(data, train=Split(data.train.images[:images],
                                                         data.train.labels[:images]))
        run_data = resize(data, spec.input_size) if spec.input_size != data.size else data
        torch.manual_seed(cfg.seed + seed)  # the init seed, moved by the seed index too
        model = build_model(spec)
        curve: list[dict] = []

        def on_epoch(epoch: int, val_acc: float) -> str | None:
            curve.append({"epoch": epoch, "val_acc": val_acc})
            if cfg.pruner and should_prune(seen, cost.madds, epoch, val_acc, cfg.pruner):
                return "stop"
            return None

        guard = self.isolation.step if self.isolation else contextlib.nullcontext
        try:
            result = fit(model, run_data, recipe, on_epoch=on_epoch, guard=guard, checkpoint=ckpt)
        except NonFiniteLossError:
            remove_checkpoint(ckpt)
            raise
        remove_checkpoint(ckpt)
        write_record(trial, curve=result.curve, seconds=result.seconds,
                     cpu_seconds=round(result.cpu_seconds, 3),
                     images_per_s=result.images_per_s, epochs_run=result.epochs_run,
                     **({"resumed_epochs": result.resumed_epochs} if result.resumed_epochs else {}),
                     **({"compile_seconds": round(result.compile_seconds, 3)}
                        if result.compile_seconds is not None else {}),
                     **({"compile_note": result.compile_note} if result.compile_note else {}))
        if result.stopped_early:
            raise optuna.TrialPruned(f"pruned at epoch {result.epochs_run}")
        if holdout:
            self._score_holdout(trial, model, run_data, recipe, guard)
        value = float(cost.madds)  # the second objective: MAdds, or the measured latency
        if cfg.measure:
            latency = self._measure(trial, model, spec)
            value = latency if cfg.objective == "latency" else value
        top = mf.top if mf else None
        if not self.baseline and queued.rung == (top or 0) and _on_front(seen, result.val_acc,
                                                                       value, top):
            self._keep_weights(trial, model)
        return result.val_acc, value

    def _score_holdout(self, trial: optuna.Trial, model: nn.Module, data: Dataset,
                       recipe: Recipe, guard) -> None:
        """Store the run's holdout accuracy and which holdout images it got right."""
        from ..train.train import correct_mask

        assert data.holdout is not None
        bf16 = data.train.images.device.type == "cuda" if recipe.bf16 is None else recipe.bf16
        right = correct_mask(model, data.holdout, data, recipe.eval_batch_size, bf16,
                             recipe.channels_last, guard)
        write_record(trial, holdout_acc=float(right.float().mean()),
                     holdout_correct=pack_bits(right.numpy()))

    def _measure(self, trial: optuna.Trial, model: nn.Module, spec: ArchSpec) -> float:
        """Time the trained network with the other workers on this machine paused; its ms."""
        from ..nn.latency import describe_device, measure_latency
        from ..train.train import resolve_device

        m = self.cfg.measure
        assert m is not None and self.isolation is not None
        device = resolve_device(m.device)
        with self.isolation.exclusive(m.timeout) as isolated:
            found = measure_latency(model, (spec.in_channels, spec.input_size, spec.input_size),
                                    device=device, batch=m.batch, threads=m.threads,
                                    rounds=m.repeats)
        threads = f", {m.threads} thread(s)" if device.type == "cpu" else ""
        write_record(trial, latency_ms=found["latency_ms"], latency_ms_p90=found["latency_ms_p90"],
                     latency_isolated=isolated,
                     latency_device=f"{describe_device(device)}{threads}, batch {m.batch}")
        return found["latency_ms"]

    def _keep_weights(self, trial: optuna.Trial, model: nn.Module) -> None:
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
        write_record(trial, weights_artifact=artifact)


# The distributions of a queued run's parameters: one per study whatever the run, so that
# Optuna's importance (which reads the search space every trial shares) sees them; widened only
# for a value outside (a multiplier or seed index beyond any grid the defaults make).
MULTIPLIER_RANGE, SEED_RANGE = (-4.0, 16.0), (0, 15)
QUEUED_MEANINGS = {
    "family": "a baseline family (width, depth, compound, experts) or, for a confirmation run, "
              "the search it confirms (search, random)",
    "multiplier": "the family's scale: width or depth multiplier, compound phi, expert count",
    "seed": "seed index: 0 is the search's own run, confirmations and controls take 1..N",
}


def queued_params(record: TrialRecord) -> dict[str, tuple[object, BaseDistribution]]:
    """A queued run's family, multiplier (none for a confirmation) and seed index as Optuna
    parameters: name -> (value, distribution)."""
    out: dict[str, tuple[object, BaseDistribution]] = {}
    if record.family in FAMILY_ORDER:
        out["family"] = (record.family, CategoricalDistribution(FAMILY_ORDER))
    if record.multiplier is not None:
        m = float(record.multiplier)
        low, high = MULTIPLIER_RANGE
        out["multiplier"] = (m, FloatDistribution(min(low, m), max(high, m)))
    low, high = SEED_RANGE
    out["seed"] = (int(record.seed), IntDistribution(min(low, record.seed), max(high, record.seed)))
    return out


def sibling_run(study: optuna.Study, key: str, seed: int, epochs: int, images: int | None,
                holdout: bool = False) -> tuple[str, optuna.trial.FrozenTrial] | None:
    """A trained run of the same architecture, seed index, epochs and images in a sibling study
    stored under the same training settings (the study, the trial), if any; with `holdout`, only
    one scored on the holdout split (a search trial never is)."""
    from ..store.settings import sibling_runs

    for name, done, r, done_epochs in sibling_runs(study):
        if ((r.arch_key, r.seed, done_epochs, r.train_images) == (key, seed, epochs, images)
                and (not holdout or r.holdout_acc is not None)):
            return name, done
    return None


def _on_front(study: optuna.Study, acc: float, cost: float, rung: int | None = None) -> bool:
    """Whether (acc, cost) is not dominated by a finished feasible trial of the study (at `rung`);
    cost is the study's second objective (MAdds or latency)."""
    points = [(t.values[0], t.values[1]) for t in feasible_done(study, rung)]
    return len(points) in pareto_front([*points, (acc, cost)])


def should_prune(study: optuna.Study, madds: int, epoch: int, val_acc: float,
                 pruner: PrunerConfig) -> bool:
    """True when >= k finished trials with MAdds <= ours had a higher val accuracy at this epoch."""
    if epoch <= pruner.warmup_epochs:
        return False
    better = 0
    for t in feasible_done(study):
        record = TrialRecord.of(t.user_attrs)
        if record.reused_from is not None:
            continue  # a repeat of a trained architecture is not another witness
        curve = record.curve or []
        madds_t = record.madds if record.madds is not None else float("inf")
        if madds_t <= madds and len(curve) >= epoch:
            better += curve[epoch - 1]["val_acc"] > val_acc
    return better >= pruner.k
