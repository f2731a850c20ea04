"""Proxy calibration judged: how long a proxy must train to rank architectures as a long run does.

The ladder's settings (`Calibration`, as stored with `X.calibrate`) and the summary and verdict of
its runs; search/calibration.py picks the architectures and queues the ladder.

A ladder of proxy budgets (epochs x training images) and a reference budget at the top; each
chosen architecture is trained at every budget, and each budget is scored by the Kendall tau of
its accuracies with the reference's, beside the tau that MAdds alone and params alone reach on
the same architectures. The reference trains at seed indices of its own (0 and 1: its seed tau
says whether it ranks itself), the ladder at another (2), so that no shared seed luck lifts tau.

A budget qualifies when it ranks at least `min_archs` architectures with tau >= `min_tau`,
one-sided p < 0.05, and a paired bootstrap 95% interval of (tau - MAdds' tau) above zero; the
recommended budget is the cheapest qualifying one (training seconds an architecture), and none
is recommended while the reference does not rank itself (seed tau below `min_tau`). Torch- and
Optuna-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .pareto import kendall_tau

__all__ = ["ALPHA", "RESAMPLES", "Budget", "Calibration", "bootstrap_taus", "budget_label",
           "ci_text", "kendall_greater", "percentile_ci", "rank_agreement", "resample_taus",
           "seed_agreement", "seed_line", "study_lines", "summarise", "verdict_line"]

Images = int | float | None  # training images: a count, a fraction of the split, None: all
Budget = tuple[int, Images]  # (epochs, training images); resolved budgets hold counts or None
ALPHA = 0.05       # one-sided level of tau > 0
RESAMPLES = 2000   # paired bootstrap resamples of the architectures
BOOT_SEED = 0      # fixed: the same stored runs give the same intervals in every report


@dataclass(frozen=True)
class Calibration:
    """The ladder of proxy budgets, the reference budget, and what a recommendation needs.

    `train_images` entries are image counts, fractions in (0, 1] of the training split (the
    default ladder: 1/8, 1/4, 1/2, all) or None (all); `resolve` turns fractions into counts
    against the split a calibration trains on, and the resolved settings are what is stored.
    """

    epochs: tuple[int, ...] = (1, 2, 4, 8)
    train_images: tuple[Images, ...] = (1 / 8, 1 / 4, 1 / 2, None)
    reference: Budget = (16, None)
    min_tau: float = 0.7
    archs: int = 10
    min_archs: int = 8
    reference_seeds: int = 2  # the reference trains at seed indices 0 .. reference_seeds - 1
    proxy_seed: int = 2       # the ladder's seed index, none of the reference's

    def ladder(self) -> list[Budget]:
        """Every proxy budget below the reference, cheapest first (fewest image passes)."""
        budgets = {(e, n) for e in self.epochs for n in self.train_images} - {self.reference}
        return sorted(budgets, key=lambda b: (b[0] * (b[1] or math.inf), b[0]))

    def budgets(self) -> list[Budget]:
        """The ladder and the reference, the runs each architecture gets."""
        return [*self.ladder(), self.reference]

    def written_counts(self) -> list[int]:
        """The image counts written as counts (not fractions, not all), ladder and reference."""
        return [n for n in (*self.train_images, self.reference[1]) if _is_count(n)]

    def resolve(self, n_train: int) -> Calibration:
        """These settings with every fraction turned into a count of the `n_train` images.

        A fraction that reaches the whole split is None (all); counts that coincide are one
        budget.
        """
        def count(n: Images) -> int | None:
            if n is None or _is_count(n):
                return n  # type: ignore[return-value]
            k = max(1, round(float(n) * n_train))
            return None if k >= n_train else k

        return dataclasses.replace(
            self, train_images=tuple(dict.fromkeys(count(n) for n in self.train_images)),
            reference=(self.reference[0], count(self.reference[1])))

    def seeds_overlap(self) -> bool:
        """Whether the ladder's seed index is one of the reference's (calibrations stored
        before seeds were kept apart trained every run at index 0)."""
        return self.proxy_seed < self.reference_seeds

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings, as stored with the calibration study."""
        return {"epochs": list(self.epochs), "train_images": list(self.train_images),
                "reference": list(self.reference), "min_tau": self.min_tau, "archs": self.archs,
                "min_archs": self.min_archs, "reference_seeds": self.reference_seeds,
                "proxy_seed": self.proxy_seed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """The settings stored by `to_dict`, or by a version that trained every run at seed 0."""
        old = "reference_seeds" not in data
        return cls(epochs=tuple(data["epochs"]), train_images=tuple(data["train_images"]),
                   reference=(data["reference"][0], data["reference"][1]),
                   min_tau=float(data["min_tau"]), archs=int(data["archs"]),
                   min_archs=int(data.get("min_archs", cls.min_archs)),
                   reference_seeds=1 if old else int(data["reference_seeds"]),
                   proxy_seed=0 if old else int(data["proxy_seed"]))


def _is_count(n: Images) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def budget_label(budget: Budget) -> str:
    """'4 ep x 16000', '8 ep x all' (before resolving: '2 ep x 0.25 of the split')."""
    n = budget[1]
    images = "all" if n is None else n if _is_count(n) else f"{n:g} of the split"
    return f"{budget[0]} ep x {images}"


def kendall_greater(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b and its one-sided p-value for tau > 0 (nan, nan for a constant ranking)."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    from scipy.stats import kendalltau

    result = kendalltau(x, y, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def resample_taus(target: Sequence[float], rankings: Sequence[Sequence[float]],
                  idx: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each ranking with `target` on each resample (rows of `idx`).

    Returns shape (rankings, resamples). A resample on which a ranking (or the target) is
    constant orders no pair: its tau counts as 0, no agreement.
    """
    def signs(v: Sequence[float], rows: np.ndarray) -> np.ndarray:
        a = np.asarray(v, dtype=float)[rows]
        return np.sign(a[:, :, None] - a[:, None, :])

    out = np.empty((len(rankings), len(idx)))
    for start in range(0, len(idx), 250):  # resamples x n x n sign matrices, a chunk at a time
        rows = idx[start:start + 250]
        t = signs(target, rows)
        t_ties = (t * t).sum(axis=(1, 2))
        for r, ranking in enumerate(rankings):
            s = signs(ranking, rows)
            denom = np.sqrt(t_ties * (s * s).sum(axis=(1, 2)))
            num = (s * t).sum(axis=(1, 2))
            out[r, start:start + len(rows)] = np.divide(num, denom, out=np.zeros_like(num),
                                                        where=denom > 0)
    return out


def bootstrap_taus(target: Sequence[float], rankings: Sequence[Sequence[float]],
                   resamples: int = RESAMPLES, seed: int = BOOT_SEED) -> np.ndarray:
    """Paired bootstrap over architectures: every ranking's tau with `target` on the same
    resamples (drawn with replacement, fixed seed); shape (rankings, resamples)."""
    n = len(target)
    if n < 2:
        return np.full((len(rankings), resamples), math.nan)
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    return resample_taus(target, rankings, idx)


def percentile_ci(values: np.ndarray) -> list[float]:
    """The 95% percentile interval [2.5%, 97.5%] of bootstrap values ([nan, nan] if none)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return [math.nan, math.nan]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def ci_text(ci: Sequence[float]) -> str:
    """'[0.12, 0.80]': a 95% interval as tables and verdicts print it."""
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def seed_agreement(replicates: pd.DataFrame | None) -> dict[str, Any]:
    """How well the reference ranks itself: Kendall tau between two seeds' accuracies over the
    architectures trained at both (mean over seed pairs), and the pooled within-architecture
    seed standard deviation. `replicates`: arch_key, seed, val_acc, one row per run.

    No proxy can be expected to rank like the reference better than the reference's own seeds do.
    """
    if replicates is None or replicates.empty:
        return {"seed_tau": math.nan, "seed_pairs": 0, "seed_archs": 0, "seed_sd": math.nan}
    wide = replicates.pivot_table(index="arch_key", columns="seed", values="val_acc",
                                  aggfunc="first")
    taus = []
    seeds = sorted(wide.columns)
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            both = wide[[a, b]].dropna()
            if len(both) >= 2:
                taus.append(kendall_tau(both[a].tolist(), both[b].tolist())[0])
    taus = [t for t in taus if not math.isnan(t)]
    n = wide.notna().sum(axis=1)
    deviations = wide.sub(wide.mean(axis=1), axis=0).pow(2).sum(axis=1)[n >= 2]
    dof = int((n[n >= 2] - 1).sum())
    return {"seed_tau": sum(taus) / len(taus) if taus else math.nan,
            "seed_pairs": len(taus), "seed_archs": int((n >= 2).sum()),
            "seed_sd": math.sqrt(float(deviations.sum()) / dof) if dof else math.nan}


def summarise(runs: pd.DataFrame, cal: Calibration,
              replicates: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per ladder budget: tau with the reference (one-sided p, bootstrap interval), tau of MAdds
    and params, the paired interval of tau minus MAdds' tau, seconds an arch; the recommendation.

    `runs` has one row per finished run: arch_key, epochs, train_images (NaN or None: all),
    val_acc, seconds, madds, params and seed (absent: 0). The reference accuracy of an
    architecture is its mean over the reference's seeds; a budget's, its mean over the ladder's
    seed; each budget is scored on the architectures that finished both. `replicates`
    (arch_key, seed, val_acc) are every run at the reference budget, the sibling studies' too,
    for the reference's own seed agreement (default: the reference runs in `runs`).
    """
    runs = runs.copy()
    runs["train_images"] = pd.to_numeric(runs.train_images).fillna(0).astype(int)  # 0: all
    runs["seed"] = pd.to_numeric(runs.seed).fillna(0).astype(int) if "seed" in runs else 0
    at_ref = runs[(runs.epochs == cal.reference[0])
                  & (runs.train_images == (cal.reference[1] or 0))]
    ref_runs = at_ref[at_ref.seed < cal.reference_seeds]
    ref = ref_runs.groupby("arch_key").agg(ref_acc=("val_acc", "mean"), madds=("madds", "first"),
                                           params=("params", "first"),
                                           ref_seconds=("seconds", "mean"))
    out = []
    for e, n in cal.ladder():
        mine = runs[(runs.epochs == e) & (runs.train_images == (n or 0))
                    & (runs.seed == cal.proxy_seed)]
        mine = mine.groupby("arch_key").agg(val_acc=("val_acc", "mean"), seconds=("seconds", "mean"))
        both = mine.join(ref, how="inner")
        out.append({"epochs": e, "train_images": n, "label": budget_label((e, n)),
                    "seconds_per_arch": float(mine.seconds.mean()) if len(mine) else math.nan,
                    **rank_agreement(both.val_acc.tolist(), both.ref_acc.tolist(),
                                     both.madds.tolist(), both.params.tolist())})
    for b in out:
        b["qualifies"] = not _shortfall(b, cal)
    if replicates is None:
        replicates = ref_runs[["arch_key", "seed", "val_acc"]]
    seeds = seed_agreement(replicates)
    reference = {"epochs": cal.reference[0], "train_images": cal.reference[1], "archs": len(ref),
                 "seeds": list(range(cal.reference_seeds)),
                 "seconds_per_arch": float(ref.ref_seconds.mean()) if len(ref) else math.nan,
                 # How far apart the architectures are at the reference: a span within a few
                 # seed standard deviations leaves no ranking for a proxy to match.
                 "acc_min": float(ref.ref_acc.min()) if len(ref) else math.nan,
                 "acc_max": float(ref.ref_acc.max()) if len(ref) else math.nan, **seeds}
    recommended, reason = _recommend(out, cal, reference)
    return {"budgets": out, "recommended": recommended, "reason": reason,
            "min_tau": cal.min_tau, "min_archs": cal.min_archs, "alpha": ALPHA,
            "proxy_seed": cal.proxy_seed, "reference_seed_tau": seeds["seed_tau"],
            "reference": reference}


def rank_agreement(proxy: Sequence[float], target: Sequence[float], madds: Sequence[float],
                   params: Sequence[float]) -> dict[str, Any]:
    """Tau of the proxy with the target (one-sided p, 95% interval), of MAdds and params alone,
    and the paired bootstrap 95% interval of tau minus MAdds' tau, over the same architectures."""
    tau, p = kendall_greater(proxy, target)
    boot = bootstrap_taus(target, [proxy, madds])
    return {"archs": len(proxy), "tau": tau, "p_value": p, "tau_ci95": percentile_ci(boot[0]),
            "tau_madds": kendall_tau(madds, target)[0], "tau_madds_ci95": percentile_ci(boot[1]),
            "tau_params": kendall_tau(params, target)[0],
            "tau_gain_ci95": percentile_ci(boot[0] - boot[1])}


def _shortfall(b: dict[str, Any], cal: Calibration) -> str:
    """What keeps budget `b` from qualifying ('' when it qualifies); NaN never qualifies."""
    gain = b["tau_gain_ci95"]
    if b["archs"] < cal.min_archs:
        return f"{b['archs']} architectures of the {cal.min_archs} needed"
    if math.isnan(b["tau"]):
        return "no tau (a ranking is constant)"
    if b["tau"] < cal.min_tau:
        return f"tau {b['tau']:.2f} below {cal.min_tau:g}"
    if not b["p_value"] < ALPHA:
        return f"one-sided p {b['p_value']:.3g} not below {ALPHA:g}"
    if not gain[0] > 0:
        return (f"the 95% interval of tau minus MAdds' tau, {ci_text(gain)}, does not lie "
                "above zero")
    return ""


def _recommend(budgets: list[dict[str, Any]], cal: Calibration, reference: dict[str, Any]
               ) -> tuple[dict[str, Any] | None, str]:
    """The cheapest qualifying budget (None when none qualifies or the reference does not rank
    itself) and one line saying why."""
    if cal.seeds_overlap():
        return None, ("No budget is recommended: the proxy runs share seed index "
                      f"{cal.proxy_seed} with the reference's (a calibration stored before their "
                      "seeds were kept apart), so shared seed luck lifts tau; run calibrate again "
                      "to train the reference at seed indices of its own")
    seed_tau = reference["seed_tau"]
    if not seed_tau >= cal.min_tau:
        why = ("is unknown (no architecture has two finished reference seeds)"
               if math.isnan(seed_tau) else
               f"is {seed_tau:.2f}, below {cal.min_tau:g}, over {reference['seed_archs']} "
               "architectures")
        return None, ("No budget is recommended: the reference does not rank itself across "
                      f"seeds (its seed tau {why}), so no proxy can be judged against it; train "
                      "the reference longer (calibration.reference) or calibrate on "
                      "architectures further apart")
    good = [b for b in budgets if b["qualifies"]]
    if not good:
        near = max(budgets, key=lambda b: (b["archs"] >= cal.min_archs,
                                           -math.inf if math.isnan(b["tau"]) else b["tau"]),
                   default=None)
        closest = f"; closest, {near['label']}: {_shortfall(near, cal)}" if near else ""
        return None, (f"No budget qualifies (tau >= {cal.min_tau:g} over >= {cal.min_archs} "
                      f"architectures, one-sided p < {ALPHA:g}, 95% interval of tau minus MAdds' "
                      f"tau above zero){closest}: search at the reference budget, or train more "
                      "architectures (calibration.archs) or longer budgets")
    rec = min(good, key=lambda b: b["seconds_per_arch"])
    return rec, (f"{rec['label']} is the cheapest budget that qualifies: tau {rec['tau']:.2f} "
                 f"(95% interval {ci_text(rec['tau_ci95'])}, one-sided p {rec['p_value']:.3g}) "
                 f"over {rec['archs']} architectures, above MAdds alone by "
                 f"{ci_text(rec['tau_gain_ci95'])}, "
                 f"{rec['seconds_per_arch']:.1f} s an architecture; the reference ranks itself "
                 f"at seed tau {seed_tau:.2f}")


def seed_line(reference: dict[str, Any]) -> str:
    """One sentence on how well the reference ranks itself across seeds (the ceiling of tau)."""
    if reference.get("seed_pairs", 0) == 0:
        return ("The reference's own seed agreement is unknown: one seed per architecture "
                "(calibrate trains the reference at seed indices 0 and 1)")
    return (f"The reference against itself: tau {reference['seed_tau']:.2f} between seeds over "
            f"{reference['seed_archs']} architectures (seed sd {reference['seed_sd']:.4f}); "
            "no proxy can be expected to rank better")


def verdict_line(summary: dict[str, Any]) -> str:
    """One sentence naming the recommended budget, or saying why none is and what to do."""
    return summary["reason"]


def study_lines(recommended: dict[str, Any] | None, train_size: int) -> list[str]:
    """The study-file lines that set the recommended proxy budget."""
    if recommended is None:
        return []
    n = recommended["train_images"]
    limit = "train_limit: null    # every training image" if n is None or n >= train_size \
        else f"train_limit: {n}"
    return [limit, f"recipe: {{epochs: {recommended['epochs']}}}    # keep your other recipe keys"]
