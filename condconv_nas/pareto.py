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

from .record import FAMILY_ORDER, SEARCH

__all__ = ["Normalisation", "front", "gain_at_matched_madds", "hypervolume",
           "hypervolume_history", "kendall_tau", "madds_saved_at_matched_accuracy", "normalisation",
           "pareto_front", "power_law_fit", "seed_means", "summary"]

# A gain counts as real when it exceeds this many seed standard deviations of the baseline.
NOISE_SIGMAS = 2.0


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
    """Shared scale for hypervolume: log-MAdds and accuracy mapped to [0, 1], worst corner = ref."""

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
    """Area dominated by the points, between them and the reference (worst MAdds, worst accuracy)."""
    f = front(df)
    if f.empty:
        return 0.0
    cost = np.clip(norm.cost(f.madds.to_numpy()), 0.0, 1.0)
    quality = np.clip(norm.quality(f.val_acc.to_numpy()), 0.0, 1.0)
    # The front sorted by MAdds has rising accuracy: each point adds a strip above the last.
    area, below = 0.0, 0.0
    for c, q in zip(cost, quality):
        if q > below:
            area += (1.0 - c) * (q - below)
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
    """Kendall's tau-b of two rankings and its two-sided p-value.

    Without ties the p-value is exact: S = concordant - discordant pairs is counted over all n!
    orderings through the number of permutations with k inversions (Mahonian numbers). With ties
    it is the normal approximation with Kendall's (1945) tie-corrected variance.
    """
    n = len(x)
    if n != len(y):
        raise ValueError(f"kendall_tau: {n} values against {len(y)}")
    if n < 2:
        return math.nan, math.nan
    conc = disc = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            conc += s > 0
            disc += s < 0
    pairs = n * (n - 1) // 2
    tx, ty = _tie_groups(x), _tie_groups(y)
    n1 = sum(t * (t - 1) // 2 for t in tx)
    n2 = sum(t * (t - 1) // 2 for t in ty)
    if n1 == pairs or n2 == pairs:
        return math.nan, math.nan  # one ranking is constant
    S = int(conc - disc)
    tau = S / math.sqrt((pairs - n1) * (pairs - n2))
    if not n1 and not n2:
        counts = _inversion_counts(n)  # S = pairs - 2 * inversions
        extreme = sum(c for k, c in enumerate(counts) if abs(pairs - 2 * k) >= abs(S))
        return tau, min(1.0, extreme / math.factorial(n))
    v0 = n * (n - 1) * (2 * n + 5)
    vt = sum(t * (t - 1) * (2 * t + 5) for t in tx)
    vu = sum(u * (u - 1) * (2 * u + 5) for u in ty)
    v1 = sum(t * (t - 1) for t in tx) * sum(u * (u - 1) for u in ty) / (2 * n * (n - 1))
    v2 = (sum(t * (t - 1) * (t - 2) for t in tx) * sum(u * (u - 1) * (u - 2) for u in ty)
          / (9 * n * (n - 1) * (n - 2))) if n > 2 else 0.0
    var = (v0 - vt - vu) / 18 + v1 + v2
    return tau, math.erfc(abs(S) / math.sqrt(var) / math.sqrt(2)) if var > 0 else math.nan


def _tie_groups(values: Sequence[float]) -> list[int]:
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return [c for c in counts.values() if c > 1]


def _inversion_counts(n: int) -> list[int]:
    """How many permutations of n items have k inversions, k = 0 .. n(n-1)/2."""
    counts = [1]
    for m in range(2, n + 1):  # insert item m into each permutation of m - 1 items
        new = [0] * (len(counts) + m - 1)
        for k, c in enumerate(counts):
            for extra in range(m):
                new[k + extra] += c
        counts = new
    return counts
