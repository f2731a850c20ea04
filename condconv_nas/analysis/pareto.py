"""Pareto analysis of (accuracy up, MAdds down): fronts, hypervolume, matched comparisons, fits.

Torch-free; pandas in, pandas out. A trials frame has one row per finished trial with at least
`family` ('search', 'random', or a baseline family), `val_acc` and `madds`; baseline rows also
have `multiplier` and `seed`. Comparisons are made on log-MAdds, the axis on which scaling
curves are straight (Tan & Le 2019; Radosavovic et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store.record import FAMILY_ORDER, SEARCH

__all__ = ["Normalisation", "front", "latency_axis", "gain_at_matched_madds", "hypervolume",
           "hypervolume_history", "kendall_tau", "madds_saved_at_matched_accuracy", "normalisation",
           "pareto_front", "power_law_fit", "seed_means", "summary"]

# A gain counts as real when it exceeds this many seed standard deviations of the baseline.
NOISE_SIGMAS = 2.0
REF_MARGIN = 0.1  # the hypervolume reference lies this far beyond the worst corner (scaled axes)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points of (accuracy to maximise, MAdds to minimise).

    A point is dominated when another has accuracy >= and MAdds <=, one of them strictly.
    Duplicates of a front point are all kept. Sorted by MAdds, then accuracy descending.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    kept: list[int] = []
    best = float("-inf")
    for i in order:
        acc, madds = points[i]
        if acc > best:
            kept.append(i)
            best = acc
        elif acc == best and kept and points[kept[-1]] == (acc, madds):
            kept.append(i)  # an exact duplicate of the last front point
    return kept


def front(df: pd.DataFrame, acc: str = "val_acc", madds: str = "madds") -> pd.DataFrame:
    """The non-dominated rows of `df`, sorted by MAdds (exact duplicates dropped)."""
    if df.empty:
        return df.copy()
    unique = df.drop_duplicates(subset=[acc, madds])
    idx = pareto_front(list(zip(unique[acc].astype(float), unique[madds].astype(float))))
    return unique.iloc[idx].reset_index(drop=True)


def latency_axis(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a measured latency, their `madds` column replaced by it (ms).

    Latency is a property of the architecture, not of a training seed: every row of one
    architecture gets the median of its measurements, so the seeds of a baseline point or of a
    confirmation share one cost. The true count stays in `madds_count`. Every front, matched
    comparison and claim of this module and claims.py then reads on measured latency.
    """
    if "latency_ms" not in df or df.empty:
        return df.iloc[0:0].assign(madds_count=df.get("madds"))
    have = df[df.latency_ms.notna() & (df.latency_ms > 0)]
    key = have.arch_key.where(have.arch_key.astype(bool), have.number.astype(str))
    typical = have.groupby(key).latency_ms.transform("median")
    return have.assign(madds_count=have.madds, madds=typical)


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Baseline points averaged over seeds: family, multiplier, madds, val_acc (mean), acc_std, seeds."""
    if df.empty:
        return pd.DataFrame(columns=["family", "multiplier", "madds", "val_acc", "acc_std", "seeds"])
    g = df.groupby(["family", "multiplier"], sort=True)
    out = g.agg(madds=("madds", "first"), val_acc=("val_acc", "mean"),
                acc_std=("val_acc", lambda s: float(s.std(ddof=1)) if len(s) > 1 else math.nan),
                seeds=("val_acc", "size")).reset_index()
    return out.sort_values(["family", "madds"]).reset_index(drop=True)


@dataclass(frozen=True)
class Normalisation:
    """Shared scale for hypervolume: log-MAdds and accuracy mapped to [0, 1].

    The reference point lies `REF_MARGIN` beyond the worst corner of all trials (cost 1.1,
    quality -0.1), the same for every family, so a point at the dearest MAdds or at the lowest
    accuracy still adds to the volume (at the corner itself it would add nothing).
    """

    madds_lo: float
    madds_hi: float
    acc_lo: float
    acc_hi: float

    def cost(self, madds: np.ndarray) -> np.ndarray:
        """log-MAdds on [0, 1] (0 cheapest)."""
        span = math.log(self.madds_hi) - math.log(self.madds_lo)
        return (np.log(np.asarray(madds, float)) - math.log(self.madds_lo)) / (span or 1.0)

    def quality(self, acc: np.ndarray) -> np.ndarray:
        """Accuracy on [0, 1] (1 best)."""
        return (np.asarray(acc, float) - self.acc_lo) / ((self.acc_hi - self.acc_lo) or 1.0)


def normalisation(*frames: pd.DataFrame) -> Normalisation:
    """The scale spanning every trial of every frame, so all families share one reference point."""
    rows = pd.concat([f[["val_acc", "madds"]] for f in frames if not f.empty])
    return Normalisation(float(rows.madds.min()), float(rows.madds.max()),
                         float(rows.val_acc.min()), float(rows.val_acc.max()))


def hypervolume(df: pd.DataFrame, norm: Normalisation) -> float:
    """Area dominated by the points up to the shared reference point (see Normalisation)."""
    f = front(df)
    if f.empty:
        return 0.0
    cost = np.clip(norm.cost(f.madds.to_numpy()), 0.0, 1.0)
    quality = np.clip(norm.quality(f.val_acc.to_numpy()), 0.0, 1.0)
    # The front sorted by MAdds has rising accuracy: each point adds a strip above the last.
    area, below = 0.0, -REF_MARGIN
    for c, q in zip(cost, quality):
        if q > below:
            area += (1.0 + REF_MARGIN - c) * (q - below)
            below = q
    return float(area)


def hypervolume_history(df: pd.DataFrame, norm: Normalisation) -> pd.DataFrame:
    """Hypervolume of the trials numbered <= n, for every n (the search's progress curve)."""
    df = df.sort_values("number")
    values = [hypervolume(df.iloc[: i + 1], norm) for i in range(len(df))]
    return pd.DataFrame({"number": df.number.to_numpy(), "hypervolume": values})


def _curve(baseline: pd.DataFrame) -> pd.DataFrame:
    """A baseline family's front of seed means, sorted by MAdds (accuracy rising)."""
    aggregated = ("acc_std" in baseline or "multiplier" not in baseline
                  or baseline.multiplier.isna().all())  # a search-like family (the control)
    means = baseline if aggregated else seed_means(baseline)
    return front(means)


def gain_at_matched_madds(search_front: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of each search front point minus the baseline front's, interpolated on log-MAdds.

    Only points inside the baseline's MAdds range (its cheapest to its dearest point) are
    compared, never extrapolated. Between front points the accuracy is interpolated; past the
    front's last point it stays at that point's accuracy, since a dearer baseline that is less
    accurate is dominated (at that budget one would use the front's point). `noise` is
    NOISE_SIGMAS seed standard deviations of the baseline there; `beyond_noise` says |gain| > noise.
    """
    curve = _curve(baseline)
    top = baseline.madds.max() if len(baseline) else 0
    cols = ["madds", "val_acc", "baseline_acc", "gain", "noise", "beyond_noise"]
    if len(curve) < 1 or search_front.empty:
        return pd.DataFrame(columns=cols)
    x = np.log(curve.madds.to_numpy(float))
    std = curve.acc_std.to_numpy(float) if "acc_std" in curve else np.full(len(curve), np.nan)
    inside = search_front[(search_front.madds >= curve.madds.min()) & (search_front.madds <= top)]
    lx = np.log(inside.madds.to_numpy(float))  # np.interp holds the last value past the front
    base = np.interp(lx, x, curve.val_acc.to_numpy(float))
    noise = NOISE_SIGMAS * np.interp(lx, x, std)
    gain = inside.val_acc.to_numpy(float) - base
    return pd.DataFrame({"madds": inside.madds.to_numpy(), "val_acc": inside.val_acc.to_numpy(),
                         "baseline_acc": base, "gain": gain, "noise": noise,
                         "beyond_noise": np.abs(gain) > noise})


def madds_saved_at_matched_accuracy(search_front: pd.DataFrame, baseline: pd.DataFrame
                                    ) -> pd.DataFrame:
    """For each search front point, the baseline MAdds at the same accuracy and the share saved.

    The baseline front's MAdds are interpolated on log scale against accuracy, inside its
    accuracy range only. `saved` = 1 - search MAdds / baseline MAdds (negative: costs more).
    """
    curve = _curve(baseline)
    cols = ["madds", "val_acc", "baseline_madds", "saved"]
    if len(curve) < 1 or search_front.empty:
        return pd.DataFrame(columns=cols)
    inside = search_front[(search_front.val_acc >= curve.val_acc.min())
                          & (search_front.val_acc <= curve.val_acc.max())]
    base = np.exp(np.interp(inside.val_acc.to_numpy(float), curve.val_acc.to_numpy(float),
                            np.log(curve.madds.to_numpy(float))))
    return pd.DataFrame({"madds": inside.madds.to_numpy(), "val_acc": inside.val_acc.to_numpy(),
                         "baseline_madds": base, "saved": 1.0 - inside.madds.to_numpy(float) / base})


def power_law_fit(df: pd.DataFrame) -> dict[str, float]:
    """Least-squares fit of error = coef * MAdds**slope on log-log axes, with its r^2."""
    err = 1.0 - df.val_acc.to_numpy(float)
    keep = err > 0
    x, y = np.log(df.madds.to_numpy(float)[keep]), np.log(err[keep])
    if len(np.unique(x)) < 2:
        return {"slope": math.nan, "coef": math.nan, "r2": math.nan, "points": int(len(x))}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / total if total > 0 else 1.0
    return {"slope": float(slope), "coef": float(math.exp(intercept)), "r2": r2,
            "points": int(len(x))}


def _beyond(gains: pd.DataFrame) -> str:
    """'k of n' matched points where the search gains more than the seed noise."""
    if gains.empty:
        return "-"
    if gains.noise.isna().all():
        return f"? of {len(gains)} (one seed: no noise estimate)"
    return f"{int((gains.gain > gains.noise).sum())} of {len(gains)}"


def summary(trials: pd.DataFrame) -> pd.DataFrame:
    """The headline table: one row per family, the search compared with each of the others.

    Columns: family, trials, front (size), hypervolume (shared reference), madds_lo/hi, gain_mean
    and gain_max (search over the family at matched MAdds), beyond_noise ('k of n'), saved_median
    (MAdds saved at matched accuracy), seed_std (median over points) and slope (power law).
    """
    families = [f for f in FAMILY_ORDER if f in set(trials.family)] + sorted(
        set(trials.family) - set(FAMILY_ORDER))
    norm = normalisation(trials)
    search = front(trials[trials.family == SEARCH])
    rows = []
    for family in families:
        sub = trials[trials.family == family]
        baseline = "multiplier" in sub and sub.multiplier.notna().any()
        points = seed_means(sub) if baseline else sub
        row = {"family": family, "trials": len(sub), "front": len(front(points)),
               "hypervolume": hypervolume(points, norm), "madds_lo": int(sub.madds.min()),
               "madds_hi": int(sub.madds.max()),
               "slope": power_law_fit(points if baseline else front(sub))["slope"],
               "seed_std": float(points.acc_std.median()) if baseline else math.nan}
        if family != SEARCH and not search.empty:
            gains = gain_at_matched_madds(search, points)
            saved = madds_saved_at_matched_accuracy(search, points)
            row.update(gain_mean=float(gains.gain.mean()) if len(gains) else math.nan,
                       gain_max=float(gains.gain.max()) if len(gains) else math.nan,
                       beyond_noise=_beyond(gains),
                       saved_median=float(saved.saved.median()) if len(saved) else math.nan)
        rows.append(row)
    cols = ["family", "trials", "front", "hypervolume", "madds_lo", "madds_hi", "gain_mean",
            "gain_max", "beyond_noise", "saved_median", "seed_std", "slope"]
    return pd.DataFrame(rows).reindex(columns=cols)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b of two rankings and its two-sided p-value (scipy.stats.kendalltau).

    Without ties the p-value is exact (the permutation distribution); with ties it is the normal
    approximation with Kendall's tie-corrected variance. A constant ranking gives (nan, nan).
    """
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: {len(x)} values against {len(y)}")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    from scipy.stats import kendalltau

    result = kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)
