"""The calibration ladder: pick architectures spread over MAdds, train them at every proxy budget.

`run_calibrate` queues K architectures (half space samples, half baseline points) at every budget
of the study file's `calibration` ladder into the sibling study `X.calibrate` and runs them;
analysis/calibration.py judges the runs (Kendall tau against the reference, the verdict).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import optuna

from ..analysis.calibration import budget_label
from ..analysis.results import calibration_of
from ..errors import StudyError
from ..nn.cost import count_cost
from ..nn.spec import ArchSpec
from ..store.attrs import set_study_attr
from .baselines import baseline_grid, search_range
from .config import StudyConfig, calibrate_study_config, load_study_data
from .match import adopt_stored_layout
from .study import check_budget, open_study, queue_runs, space_adapter
from .workers import resolve_workers, run_workers

__all__ = ["calibration_archs", "run_calibrate", "spread"]


def spread(madds: Sequence[float], k: int) -> list[int]:
    """Indices of k items evenly spaced over log-MAdds (all of them when there are fewer)."""
    order = sorted(range(len(madds)), key=lambda i: madds[i])
    if len(order) <= k:
        return order
    if k == 1:
        return [order[len(order) // 2]]
    logs = [math.log(max(madds[i], 1.0)) for i in order]
    picked: list[int] = []
    for j in range(k):  # nearest unpicked item to each evenly spaced target
        target = logs[0] + j * (logs[-1] - logs[0]) / (k - 1)
        free = [p for p in range(len(order)) if order[p] not in picked]
        picked.append(order[min(free, key=lambda p: (abs(logs[p] - target), p))])
    return sorted(picked, key=lambda i: madds[i])


def calibration_archs(cfg: StudyConfig, adapt: Callable[[ArchSpec], ArchSpec], k: int
                      ) -> list[tuple[str, ArchSpec]]:
    """k distinct architectures spread over log-MAdds: half space samples, half baseline points.

    Samples come from a seeded random sampler (the same on every run, so a resumed calibration
    trains the same architectures), within the study's MAdds budget.
    """
    from .objective import arch_key

    space = cfg.space
    grid = baseline_grid(space, cfg.baselines.families, cfg.baselines.points, adapt=adapt,
                         madds_range=search_range(space, adapt, cfg.budget_madds))
    seen: set[str] = set()
    samples: list[tuple[str, ArchSpec, int]] = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed))
    for i in range(40 * k):
        if len(samples) >= 4 * k:
            break
        spec = adapt(space.sample(sampler.ask()))
        madds, key = count_cost(spec).madds, arch_key(spec)
        if madds <= cfg.budget_madds and key not in seen:
            seen.add(key)
            samples.append((f"sample {i}", spec, madds))
    points = []
    for p in grid:
        key = arch_key(p.spec)
        if key not in seen:
            seen.add(key)
            points.append((p.label, p.spec, count_cost(p.spec).madds))
    half = min(len(samples), (k + 1) // 2)
    picked = [samples[i] for i in spread([m for *_, m in samples], half)]
    picked += [points[i] for i in spread([m for *_, m in points], k - len(picked))]
    if len(picked) < k:  # too few baseline points: more samples
        rest = [s for s in samples if s not in picked]
        picked += [rest[i] for i in spread([m for *_, m in rest], k - len(picked))]
    return [(label, spec) for label, spec, _ in sorted(picked, key=lambda x: x[2])]


def run_calibrate(cfg: StudyConfig, archs: int | None = None,
                  print_fn: Callable[[str], None] = print) -> dict:
    """Train K architectures at every proxy budget of the ladder into `X.calibrate`; summarise.

    Every run is a queued trial of the sibling study (resumable; `worker --calibrate` joins).
    The reference trains at seed indices 0 .. reference_seeds - 1 (its seed tau), the ladder at
    `proxy_seed`, none of them; fractions of the training split are resolved against it, and the
    resolved ladder is stored, so a resumed calibration trains the same runs.
    """

    cfg = adopt_stored_layout(cfg)
    cal = cfg.calibration if archs is None else dataclasses.replace(cfg.calibration, archs=archs)
    ccfg = calibrate_study_config(resolve_workers(dataclasses.replace(cfg, calibration=cal)))
    data = load_study_data(ccfg)  # every training image; a missing dataset stops us here
    n_train = len(data.train)
    for n in cal.written_counts():  # counts the user wrote; fractions always fit
        if n > n_train:
            key = "reference.train_images" if n == cal.reference[1] else "train_images"
            raise StudyError(f"{cfg.path}: calibration.{key}: {n} exceeds the {n_train} "
                             f"training images of {cfg.dataset} (what the validation and holdout "
                             "splits leave); lower it, write a fraction such as 0.25, or all")
    cal = cal.resolve(n_train)
    ref_n = cal.reference[1]
    if not cal.ladder() or any(ref_n is not None and (n is None or n > ref_n)
                               for _, n in cal.ladder()):
        raise StudyError(f"{cfg.path}: calibration: on {n_train} training images the ladder "
                         f"({', '.join(budget_label(b) for b in cal.ladder()) or 'empty'}) is not "
                         f"all below the reference ({budget_label(cal.reference)}); lower "
                         "calibration.train_images or raise the reference's")
    check_budget(cfg, data)  # space samples are drawn within the budget
    picks = calibration_archs(cfg, space_adapter(cfg.space, data), cal.archs)
    study = open_study(ccfg, "calibrate")
    set_study_attr(study, "calibration", cal.to_dict())

    def points(budgets: list) -> list[dict]:
        return [{"baseline_spec": spec.to_dict(), "family": "calibration", "epochs": e,
                 "train_images": n, "baseline_label": f"{label} @ {budget_label((e, n))}"}
                for label, spec in picks for e, n in budgets]

    queued, _, ccfg = queue_runs(study, ccfg, points([cal.reference]),
                                  range(cal.reference_seeds), print_fn)
    more, waiting, ccfg = queue_runs(study, ccfg, points(cal.ladder()),
                                      range(cal.proxy_seed, cal.proxy_seed + 1), print_fn)
    queued += more
    budgets = cal.budgets()
    print_fn(f"study {ccfg.name}: {len(picks)} architectures x {len(budgets)} budgets "
             f"({', '.join(budget_label(b) for b in budgets)}; reference "
             f"{budget_label(cal.reference)} at seed indices 0-{cal.reference_seeds - 1}, the "
             f"ladder at {cal.proxy_seed}); {queued} runs newly queued, {waiting} to run; "
             f"storage {ccfg.storage}; {ccfg.workers} worker(s)")
    if waiting:
        run_workers(ccfg, print_fn, baseline=True, data=data)
    summary = calibration_of(study)
    assert summary is not None  # its settings were stored above
    summary["train_size"] = n_train
    return summary
