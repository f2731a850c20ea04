"""The headline's claims: confirmed search means against baseline seed means, with honest errors.

A search front point is the best of many single runs, so its own accuracy is inflated by the
selection (the winner's curse). A claim is therefore made only from its *confirmation*: the same
architecture retrained with fresh seeds. Each comparison is a contrast of independent group means
(one group = one architecture's accuracies over seeds):

    gain = mean(confirmed) - [(1 - w) mean(baseline_j) + w mean(baseline_j+1)]

where the baseline is interpolated on log-MAdds between its two grid points around the confirmed
point's MAdds (w = 0 or 1 at a grid point). Its standard error adds every group's s^2/n with the
squared weights; its degrees of freedom are Welch-Satterthwaite's, so a gain is judged with
Welch's t (scipy.stats.t) and reduces exactly to Welch's two-sample test at a grid point.

The tested claim per (source, baseline family) is the mean of these gains over the confirmed
points the family's MAdds range covers: one contrast, one test. All such tests on a page (the
search and its random control against every family) enter one Holm step-down, so the chance of
any false claim on the page is at most 5%. Per-point gains are shown with unadjusted intervals
as description, and are never claims on their own. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["ALPHA", "Estimate", "Group", "claims_gain", "compare", "contrast", "groups_of",
           "headline", "holm", "interpolation_terms"]

ALPHA = 0.05  # family-wise error over all comparisons on a page


@dataclass(frozen=True)
class Group:
    """One architecture's accuracy over seeds: MAdds, mean, sample std (ddof 1), seeds."""

    madds: float
    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Estimate:
    """A contrast of group means: its value, standard error and Welch-Satterthwaite df."""

    value: float
    se: float
    df: float

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided confidence interval (NaN when the error is unknown)."""
        if not (self.se > 0 and self.df > 0):
            return (math.nan, math.nan)
        half = float(stats.t.ppf(0.5 + level / 2, self.df)) * self.se
        return (self.value - half, self.value + half)

    def p_value(self) -> float:
        """Two-sided p-value of 'the contrast is zero' (NaN when the error is unknown)."""
        if not (self.se > 0 and self.df > 0):
            return math.nan
        return float(2 * stats.t.sf(abs(self.value) / self.se, self.df))


def contrast(terms: Sequence[tuple[float, Group]]) -> Estimate:
    """sum(c * mean) over independent groups, with its standard error and df.

    A group of one seed has no variance estimate: the error is then unknown (NaN), and no claim
    can rest on it.
    """
    value = sum(c * g.mean for c, g in terms)
    parts = [(c * c * g.std ** 2 / g.n, g.n) for c, g in terms if c != 0]
    if any(n < 2 or not math.isfinite(v) for v, n in parts):
        return Estimate(value, math.nan, math.nan)
    var = sum(v for v, _ in parts)
    if var <= 0:
        return Estimate(value, 0.0, math.nan)
    df = var ** 2 / sum(v * v / (n - 1) for v, n in parts)
    return Estimate(value, math.sqrt(var), df)


def interpolation_terms(curve: Sequence[Group], madds: float, top: float | None = None
                        ) -> list[tuple[float, Group]] | None:
    """The baseline at `madds` as weighted grid points (log-MAdds), or None outside its range.

    `curve` is the family's front of seed means sorted by MAdds (accuracy rising). Past its last
    point, up to `top` (the family's dearest grid point), the family is its last front point: a
    dearer grid point that is less accurate is dominated, and at that budget one would use the
    front's. No extrapolation: a point cheaper than the cheapest or dearer than `top` is not
    compared.
    """
    top = curve[-1].madds if top is None or not curve else max(top, curve[-1].madds)
    if not curve or madds < curve[0].madds or madds > top:
        return None
    if madds > curve[-1].madds:
        return [(1.0, curve[-1])]
    for lo, hi in zip(curve, curve[1:]):
        if lo.madds <= madds <= hi.madds:
            if hi.madds == lo.madds:
                return [(1.0, lo)]
            w = (math.log(madds) - math.log(lo.madds)) / (math.log(hi.madds) - math.log(lo.madds))
            return [(1.0 - w, lo), (w, hi)] if 0 < w < 1 else [(1.0, hi if w >= 1 else lo)]
    return [(1.0, curve[0])]  # a single-point curve at exactly this MAdds


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def groups_of(df: pd.DataFrame, key: str) -> list[Group]:
    """Group a frame's runs (val_acc, madds) by `key`, sorted by MAdds."""
    out = []
    for _, g in df.groupby(key, sort=False):
        acc = g.val_acc.to_numpy(float)
        out.append(Group(float(g.madds.iloc[0]), float(acc.mean()),
                         float(acc.std(ddof=1)) if len(acc) > 1 else math.nan, len(acc)))
    return sorted(out, key=lambda g: g.madds)


def _monotone(curve: list[Group]) -> list[Group]:
    """The grid points that no cheaper point beats: the family's curve a user would pick from."""
    kept: list[Group] = []
    for g in curve:
        if not kept or g.mean > kept[-1].mean:
            kept.append(g)
    return kept


def _curves(baselines: dict[str, list[Group]]) -> dict[str, tuple[list[Group], float]]:
    """Per family: its front of seed means (sorted by MAdds) and its dearest grid point's MAdds."""
    return {family: (_monotone(sorted(grid, key=lambda g: g.madds)), max(g.madds for g in grid))
            for family, grid in baselines.items()}


def compare(confirmed: dict[str, list[Group]], baselines: dict[str, list[Group]],
            alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (source, confirmed point, baseline family) whose MAdds the family covers.

    Columns: source ('search' or 'random'), family, madds, acc (confirmed mean), seeds,
    baseline_acc, gain, se, df, ci_lo, ci_hi (95%, unadjusted), p, p_holm (over every row),
    significant (p_holm < alpha), saved (share of the family's MAdds saved at the confirmed
    mean's accuracy; descriptive, not tested).
    """
    rows = []
    curves = _curves(baselines)
    for source, points in confirmed.items():
        for family, (curve, top) in curves.items():
            for point in points:
                terms = interpolation_terms(curve, point.madds, top)
                if terms is None:
                    continue
                est = contrast([(1.0, point)] + [(-c, g) for c, g in terms])
                lo, hi = est.ci()
                rows.append({"source": source, "family": family, "madds": point.madds,
                             "acc": point.mean, "seeds": point.n,
                             "baseline_acc": sum(c * g.mean for c, g in terms),
                             "gain": est.value, "se": est.se, "df": est.df, "ci_lo": lo,
                             "ci_hi": hi, "p": est.p_value(),
                             "saved": _saved(curve, point)})
    cols = ["source", "family", "madds", "acc", "seeds", "baseline_acc", "gain", "se", "df",
            "ci_lo", "ci_hi", "p", "p_holm", "significant", "saved"]
    out = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "significant")])
    out["p_holm"] = holm(out.p.to_numpy(float)) if len(out) else []
    out["significant"] = out.p_holm < alpha
    return out.reindex(columns=cols)


def _saved(curve: list[Group], point: Group) -> float:
    """1 - MAdds / the family's MAdds at the point's accuracy (log-MAdds interpolation)."""
    accs = [g.mean for g in curve]
    if len(curve) < 2 or not accs[0] <= point.mean <= accs[-1]:
        return math.nan
    base = math.exp(float(np.interp(point.mean, accs, [math.log(g.madds) for g in curve])))
    return 1.0 - point.madds / base


def headline(confirmed: dict[str, list[Group]], baselines: dict[str, list[Group]],
             alpha: float = ALPHA) -> dict[str, dict[str, dict]]:
    """Per source and baseline family, the tested claim: the confirmed front's mean gain.

    For each (source, family) the gain of every confirmed point the family's MAdds range covers
    is averaged into one contrast (shared baseline points counted once), with its 95% CI and
    Welch p-value; Holm runs over every (source, family) test on the page. `significant` is the
    Holm decision at `alpha`; `comparisons` counts the points averaged.
    """
    tests: list[tuple[str, str, Estimate, list[Group]]] = []
    curves = _curves(baselines)
    for source, points in confirmed.items():
        for family, (curve, top) in curves.items():
            covered = [(p, interpolation_terms(curve, p.madds, top)) for p in points]
            covered = [(p, t) for p, t in covered if t is not None]
            weights: dict[int, list] = {}
            for p, terms in covered:
                for c, g in [(1.0, p)] + [(-c, g) for c, g in terms]:
                    weights.setdefault(id(g), [0.0, g])[0] += c / len(covered)
            est = (contrast([(c, g) for c, g in weights.values()]) if covered
                   else Estimate(math.nan, math.nan, math.nan))
            tests.append((source, family, est, [p for p, _ in covered]))
    adjusted = holm([t[2].p_value() for t in tests])
    out: dict[str, dict[str, dict]] = {}
    for (source, family, est, pts), p_holm in zip(tests, adjusted):
        saved = [v for v in (_saved(curves[family][0], p) for p in pts) if math.isfinite(v)]
        out.setdefault(source, {})[family] = {
            "comparisons": len(pts), "gain_mean": _num(est.value), "gain_ci95": [_num(v) for v in est.ci()],
            "p_value": _num(est.p_value()), "p_holm": _num(float(p_holm)),
            "significant": bool(p_holm < alpha),
            "madds_saved_median": _num(float(np.median(saved))) if saved else None,
            "seeds": sorted({p.n for p in pts}),
        }
    return out


def claims_gain(head: dict[str, dict[str, dict]], source: str = "search") -> bool:
    """Whether the page claims a significant gain of `source` over some baseline family."""
    return any(h["significant"] and (h["gain_mean"] or 0) > 0 for h in head.get(source, {}).values())


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def study_headline(finished: pd.DataFrame, confirmed: pd.DataFrame,
                   alpha: float = ALPHA) -> dict:
    """The page's claims from a study's frames (results.finished and results.confirmed).

    Returns {"confirmed": any source confirmed, "sources": {source: {family: claim}}, "front":
    {source: [{"number", "madds", "single_run_acc", "confirmed_acc", "seeds"}]}}. Only the
    confirmed means of each source's current front points enter a claim; a front point without
    confirmation runs is listed as selected, not confirmed.
    """
    from .pareto import front
    from .record import BASELINE_FAMILIES, SEARCH_FAMILIES

    groups: dict[str, list[Group]] = {}
    fronts: dict[str, list[dict]] = {}
    for source in SEARCH_FAMILIES:
        f = front(finished[finished.family == source])
        if f.empty:
            continue
        runs = confirmed[(confirmed.family == source) & confirmed.confirm_of.isin(f.number)]
        by_trial = {int(k): g for k, g in runs.groupby("confirm_of")}
        fronts[source] = []
        for r in f.itertuples():
            g = by_trial.get(int(r.number))
            acc = g.val_acc.to_numpy(float) if g is not None else np.array([])
            fronts[source].append({"number": int(r.number), "madds": float(r.madds),
                                   "single_run_acc": float(r.val_acc),
                                   "confirmed_acc": float(acc.mean()) if len(acc) else None,
                                   "confirmed_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                                   "seeds": int(len(acc))})
            if len(acc):
                groups.setdefault(source, []).append(
                    Group(float(r.madds), float(acc.mean()),
                          float(acc.std(ddof=1)) if len(acc) > 1 else math.nan, len(acc)))
    base = finished[finished.family.isin(BASELINE_FAMILIES)]
    baselines = {family: groups_of(base[base.family == family], "multiplier")
                 for family in BASELINE_FAMILIES if (base.family == family).any()}
    head = headline(groups, baselines, alpha) if groups and baselines else {}
    for source, claims in head.items():
        complete = all(p["seeds"] > 0 for p in fronts[source])
        for claim in claims.values():
            claim["confirmed"] = complete
    return {"confirmed": bool(groups), "sources": head, "front": fronts}
