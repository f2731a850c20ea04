"""The headline's claims: confirmed front points against matched-cost controls, on the holdout split.

A search front point is the best of many single validation runs, so its validation accuracy is
inflated twice: by seed luck and by the architecture's luck on the validation images that
selected it. A claim therefore rests only on runs scored on the *holdout* split, which no search
trial, pruner or sampler saw: the point's confirmation (fresh seeds 1..N) and its controls,
configurations of each baseline family trained under the same seed indices at the point's own
MAdds (`baselines.matched_controls`).

- **Matched**: a control within 2% of the point's cost. The point's difference is the mean over
  shared seeds of (point - control).
- **Bracketed**: no configuration is that close (depth moves in whole repeats, widths round to
  multiples of 8), so the two that bracket the point were trained. A gain is read only against
  the dearer, a loss only against the cheaper: on an accuracy curve that rises with cost, each
  reading can only understate its own direction.

**The unit of replication is the front point.** An architecture's luck on the holdout images is
shared by all of its seeds, so seeds are not independent replicates of a point-against-control
difference (pooling them was anti-conservative in simulation). Per (front, family) the points'
differences form a sample; points that share a control are averaged into one unit (their
differences share that control's luck). The tested claim is a two-sided t-interval over the
units (df = units - 1); a claim needs at least 3 units, every front point the family's MAdds
range reaches confirmed and controlled. One Holm step-down runs over every test a page states
(both fronts, every family, the MAdds and latency axes together). `bench/null_sim.py` runs whole
simulated studies through these functions. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import special

__all__ = ["ALPHA", "MATCH_TOLERANCE", "MIN_UNITS", "Arch", "Claim", "Headline", "Pairing", "apply_holm",
           "family_claim", "holm", "isotonic", "pair", "study_headline"]

ALPHA = 0.05  # family-wise error over all claims on a page
MIN_UNITS = 3  # independent front points a family claim needs
# A control within 2% of a point's MAdds is matched (confirm solves controls to it); else bracketed.
MATCH_TOLERANCE = 0.02
NO_HOLDOUT = "not confirmed on a holdout split: no claim is made"


@dataclass(frozen=True)
class Arch:
    """One architecture's holdout accuracy by seed index, at its cost (MAdds or ms)."""

    key: str
    cost: float
    acc: Mapping[int, float]

    @property
    def mean(self) -> float:
        """Mean holdout accuracy over its seeds (NaN without any)."""
        return float(np.mean(list(self.acc.values()))) if self.acc else math.nan


def paired_difference(a: Arch, b: Arch) -> float:
    """Mean over the seed indices both were trained with of (a - b); NaN when they share none."""
    seeds = set(a.acc) & set(b.acc)
    return sum(a.acc[s] - b.acc[s] for s in seeds) / len(seeds) if seeds else math.nan


@dataclass(frozen=True)
class Pairing:
    """A front point and its control: one matched configuration (lo is hi) or a bracket."""

    point: Arch
    lo: Arch
    hi: Arch

    @property
    def matched(self) -> bool:
        """Whether one control lies within tolerance of the point's cost."""
        return self.lo is self.hi

    @cached_property
    def d_gain(self) -> float:
        """The difference a gain is read from: against the dearer control, or the cheaper one
        when it did better (a gain must beat both sides of a bracket)."""
        return min(paired_difference(self.point, self.hi), paired_difference(self.point, self.lo))

    @cached_property
    def d_loss(self) -> float:
        """The difference a loss is read from: against the cheaper control, or the dearer one
        when it did worse (a loss must trail both)."""
        return max(paired_difference(self.point, self.hi), paired_difference(self.point, self.lo))


def pair(point: Arch, candidates: Sequence[Arch], tolerance: float = MATCH_TOLERANCE
         ) -> Pairing | None:
    """The point's control among a family's trained ones: the nearest within `tolerance` of its
    cost, else the dearest below and the cheapest above; None when neither exists."""
    near = [c for c in candidates if abs(c.cost - point.cost) <= tolerance * point.cost]
    if near:
        c = min(near, key=lambda c: (abs(c.cost - point.cost), c.key))
        return Pairing(point, c, c)
    below = [c for c in candidates if c.cost < point.cost]
    above = [c for c in candidates if c.cost > point.cost]
    if not below or not above:
        return None
    return Pairing(point, max(below, key=lambda c: (c.cost, c.key)),
                   min(above, key=lambda c: (c.cost, c.key)))


@dataclass(frozen=True)
class Claim:
    """One tested claim: a front's confirmed points against one baseline family on one axis."""

    source: str
    family: str
    axis: str = "madds"
    points: int = 0          # front points the family's range reaches
    units: int = 0           # independent units (points sharing a control count once)
    matched: int = 0         # points with a matched control (the rest are bracketed)
    gain_mean: float | None = None
    gain_ci95: tuple[float | None, float | None] = (None, None)
    p_value: float | None = None
    p_holm: float | None = None
    direction: str | None = None   # "gain" or "loss": the side the two-sided test leans to
    significant: bool = False
    reason: str = ""               # why no claim is tested (empty when one is)
    split: str | None = None       # the split the numbers are scored on
    seeds: tuple[int, ...] = ()
    madds_saved_median: float | None = None
    per_point: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def confirmed(self) -> bool:
        """Whether every point it would average is confirmed and controlled on the holdout."""
        return not self.reason or self.reason.startswith("too few")

    @property
    def method(self) -> str:
        """How the claim is tested, in words (also in `report --json`)."""
        if self.p_value is None:
            return f"no test: {self.reason}" if self.reason else "no test"
        kind = ("matched-cost controls" if self.matched == self.points else
                "bracketing controls (gain against the dearer, loss against the cheaper)"
                if self.matched == 0 else "matched and bracketing controls")
        return f"paired difference to {kind}; front point as unit, t over units (df = units - 1)"

    @property
    def verdict(self) -> str:
        """The claim in words."""
        if self.reason:
            return f"no claim: {self.reason}"
        if not self.significant:
            return "no significant difference"
        return f"significant {self.direction}"

    def to_dict(self) -> dict:
        """JSON-ready (`report --json` per family)."""
        return {"comparisons": self.points, "units": self.units, "matched": self.matched,
                "gain_mean": self.gain_mean, "gain_ci95": list(self.gain_ci95),
                "p_value": self.p_value, "p_holm": self.p_holm, "significant": self.significant,
                "direction": self.direction if self.significant else None,
                "verdict": self.verdict, "reason": self.reason or None,
                "confirmed": self.confirmed, "method": self.method, "split": self.split,
                "seeds": list(self.seeds), "madds_saved_median": self.madds_saved_median,
                "points": list(self.per_point)}


@dataclass(frozen=True)
class Headline:
    """The page's claims on one cost axis, computed once (study_headline) and read by the page,
    the CLI and `report --json` alike; `latency` is the same on measured latency, or None."""

    confirmed: bool  # any front point confirmed
    holdout: bool    # confirmations scored on a holdout split (else no claim is made)
    sources: dict[str, dict[str, Claim]]  # {front source: {family: Claim}}
    front: dict[str, list[dict]]          # {front source: [point status]}
    latency: Headline | None = None

    def claims(self) -> list[Claim]:
        """Every claim of this axis and of the latency axis: the ones the page's Holm bounds."""
        out = [c for fam in self.sources.values() for c in fam.values()]
        return out + (self.latency.claims() if self.latency else [])


def _finite_or_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _units(pairings: Sequence[Pairing]) -> list[list[Pairing]]:
    """Points grouped so that no two groups share a control (union of shared controls)."""
    groups: list[tuple[set[str], list[Pairing]]] = []
    for p in pairings:
        keys = {p.lo.key, p.hi.key}
        joined = [g for g in groups if g[0] & keys]
        merged = (set(keys).union(*(g[0] for g in joined)), [q for g in joined for q in g[1]] + [p])
        groups = [g for g in groups if not g[0] & keys] + [merged]
    return [g[1] for g in groups]


def family_claim(source: str, family: str, pairings: Sequence[Pairing], missing: int = 0,
                 axis: str = "madds", split: str | None = "holdout") -> Claim:
    """The tested claim of one front against one family from its points' pairings.

    `missing` counts points the family's range reaches that have no confirmation or control:
    then no claim is tested. Per unit, the mean of its points' differences; the interval runs
    from the gain side's lower bound to the loss side's upper bound, and the two-sided p-value
    is twice the smaller one-sided one (matched controls: the ordinary t-test).
    """
    points = len(pairings) + missing
    seeds = tuple(sorted({len(p.point.acc) for p in pairings}))
    base = Claim(source, family, axis, points=points, matched=sum(p.matched for p in pairings),
                 split=split, seeds=seeds, per_point=tuple(
                     {"point": p.point.key, "cost": p.point.cost,
                      "kind": "matched" if p.matched else "bracketed",
                      "d_gain": _finite_or_none(p.d_gain), "d_loss": _finite_or_none(p.d_loss),
                      "control_cost": [p.lo.cost] if p.matched else [p.lo.cost, p.hi.cost]}
                     for p in pairings))
    if points == 0:
        return replace(base, reason="no front point in the family's range")
    if missing:
        return replace(base, reason=f"{missing} of {points} front points lack a confirmation or "
                                    "control on the holdout split: run `condconv-nas confirm`")
    units = _units(pairings)
    gain = np.array([np.mean([p.d_gain for p in u]) for u in units])
    loss = np.array([np.mean([p.d_loss for p in u]) for u in units])
    n = len(units)
    base = replace(base, units=n, gain_mean=_finite_or_none(float((gain.mean() + loss.mean()) / 2)))
    if not (np.isfinite(gain).all() and np.isfinite(loss).all()):
        return replace(base, reason="a point and its control share no seed index")
    if n < MIN_UNITS:
        shared = f" ({points} points, some sharing controls)" if points >= MIN_UNITS else ""
        return replace(base, reason=f"too few front points ({n} of {MIN_UNITS} needed{shared})")
    half = float(special.stdtrit(n - 1, 0.975))  # Student's t quantile
    se_g, se_l = gain.std(ddof=1) / math.sqrt(n), loss.std(ddof=1) / math.sqrt(n)
    p_gain = _one_sided(gain.mean(), se_g, n - 1)
    p_loss = _one_sided(-loss.mean(), se_l, n - 1)
    p = min(1.0, 2 * min(p_gain, p_loss))
    return replace(base, gain_ci95=(_finite_or_none(gain.mean() - half * se_g),
                                    _finite_or_none(loss.mean() + half * se_l)),
                   p_value=p, direction="gain" if p_gain <= p_loss else "loss")


def _one_sided(mean: float, se: float, df: int) -> float:
    """P(T >= mean / se) for Student's t with `df` (se 0: certain when the mean is positive)."""
    if se <= 0:
        return 0.0 if mean > 0 else 1.0
    return float(special.stdtr(df, -mean / se))  # Student's t survival function


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


def apply_holm(claims: Sequence[Claim], alpha: float = ALPHA) -> list[Claim]:
    """Every claim with its Holm-adjusted p-value over all of them, and the decision at `alpha`."""
    adjusted = holm([math.nan if c.p_value is None else c.p_value for c in claims])
    return [replace(c, p_holm=_finite_or_none(float(a)), significant=bool(a < alpha))
            for c, a in zip(claims, adjusted)]


def isotonic(costs: Sequence[float], means: Sequence[float], weights: Sequence[float]
             ) -> list[float]:
    """Weighted isotonic (non-decreasing) fit of means sorted by cost: pool adjacent violators.

    A running maximum of noisy seed means is biased upward; pooling is not (on a flat truth it
    is the pooled mean).
    """
    order = np.argsort(costs, kind="stable")
    blocks: list[list[float]] = []  # [weighted sum, weight, count]
    for i in order:
        blocks.append([means[i] * weights[i], weights[i], 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, w, c = blocks.pop()
            blocks[-1] = [blocks[-1][0] + s, blocks[-1][1] + w, blocks[-1][2] + c]
    fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[2]))]
    out = [0.0] * len(order)
    for rank, i in enumerate(order):
        out[i] = fitted[rank]
    return out


def _saved(curve: pd.DataFrame, point: Arch) -> float:
    """1 - cost / the family's cost at the point's holdout accuracy (descriptive, not tested)."""
    if len(curve) < 2 or not curve.acc.iloc[0] <= point.mean <= curve.acc.iloc[-1]:
        return math.nan
    accs, logs = curve.acc.to_numpy(float), np.log(curve.cost.to_numpy(float))
    keep = np.r_[True, np.diff(accs) > 0]  # np.interp needs rising accuracies
    return 1.0 - point.cost / math.exp(float(np.interp(point.mean, accs[keep], logs[keep])))


def _archs(runs: pd.DataFrame, key: str) -> dict:
    """Architectures of a frame's runs with a holdout score: {group: Arch}."""
    runs = runs[runs.holdout_acc.notna()]
    out = {}
    for k, g in runs.groupby(key, sort=True):
        name = f"#{int(k)}" if isinstance(k, float) else str(k)  # a front trial's number
        out[k] = Arch(name, float(g.madds.iloc[0]),
                      {int(s): float(a) for s, a in zip(g.seed, g.holdout_acc)})
    return out


def _curve(base: pd.DataFrame) -> pd.DataFrame:
    """A family's holdout seed means, made monotone in cost (the descriptive curve)."""
    have = base[base.holdout_acc.notna()]
    if have.empty:
        return pd.DataFrame(columns=["cost", "acc"])
    g = have.groupby("multiplier").agg(cost=("madds", "first"), acc=("holdout_acc", "mean"),
                                       n=("holdout_acc", "size")).sort_values("cost")
    return pd.DataFrame({"cost": g.cost.to_numpy(float),
                         "acc": isotonic(g.cost.tolist(), g.acc.tolist(), g.n.tolist())})


def _front_status(finished: pd.DataFrame, confirmed: pd.DataFrame) -> dict[str, list[dict]]:
    """Per source, its front points with single-run, confirmed and holdout accuracies."""
    from ..store.record import SEARCH_FAMILIES
    from .pareto import front

    out: dict[str, list[dict]] = {}
    for source in SEARCH_FAMILIES:
        f = front(finished[finished.family == source])
        if f.empty:
            continue
        runs = confirmed[(confirmed.family == source) & confirmed.confirm_of.isin(f.number)]
        by_trial = {int(k): g for k, g in runs.groupby("confirm_of")}
        out[source] = []
        for r in f.itertuples():
            g = by_trial.get(int(r.number))
            acc = g.val_acc.to_numpy(float) if g is not None else np.array([])
            held = (g.holdout_acc.dropna().to_numpy(float) if g is not None else np.array([]))
            out[source].append({
                "number": int(r.number), "madds": float(r.madds), "single_run_acc": float(r.val_acc),
                "confirmed_acc": float(acc.mean()) if len(acc) else None,
                "confirmed_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                "seeds": int(len(acc)),
                "holdout_acc": float(held.mean()) if len(held) else None,
                "holdout_std": float(held.std(ddof=1)) if len(held) > 1 else None})
    return out


def _claims(finished: pd.DataFrame, confirmed: pd.DataFrame, fronts: dict[str, list[dict]],
            axis: str, split: str) -> list[Claim]:
    """Every (front, family) claim of one axis, before Holm."""
    from ..store.record import BASELINE_FAMILIES

    controls = confirmed[confirmed.confirm_of.isna() & confirmed.family.isin(BASELINE_FAMILIES)]
    holdout = confirmed.holdout_acc.notna().any()
    out = []
    for source, front in fronts.items():
        # Trial numbers restart in each front's study: a point is its source's trial.
        points = _archs(confirmed[(confirmed.family == source) & confirmed.confirm_of.notna()],
                        "confirm_of")
        for family in BASELINE_FAMILIES:
            base = finished[finished.family == family]
            if base.empty:
                continue
            candidates = list(_archs(controls[controls.family == family], "arch_key").values())
            lo, hi = base.madds.min(), base.madds.max()
            if axis != "madds" and candidates:
                # Controls are solved on MAdds: on another axis only the points inside their
                # span of that cost can be compared (a choice by cost alone, not by accuracy).
                lo = max(lo, min(c.cost for c in candidates) * (1 - MATCH_TOLERANCE))
                hi = min(hi, max(c.cost for c in candidates) * (1 + MATCH_TOLERANCE))
            reach = [p for p in front if lo <= p["madds"] <= hi]
            if not holdout:
                out.append(Claim(source, family, axis, points=len(reach), reason=NO_HOLDOUT))
                continue
            pairings, missing = [], 0
            for p in reach:
                arch = points.get(float(p["number"]))
                arch = None if arch is None else replace(arch, cost=p["madds"])
                pairing = pair(arch, candidates) if arch is not None and len(arch.acc) else None
                if pairing is None:
                    missing += 1
                else:
                    pairings.append(pairing)
            claim = family_claim(source, family, pairings, missing, axis, split)
            curve = _curve(base)
            saved = [v for v in (_saved(curve, q.point) for q in pairings) if math.isfinite(v)]
            out.append(replace(claim, madds_saved_median=float(np.median(saved)) if saved else None))
    return out


def study_headline(finished: pd.DataFrame, confirmed: pd.DataFrame,
                   latency: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                   split: str = "holdout", alpha: float = ALPHA) -> Headline:
    """The page's claims from a study's frames (results.finished and results.confirmed).

    `latency` gives the same two frames on the measured-latency axis (pareto.latency_axis);
    its claims join the one Holm and come back as the headline's `latency` view.
    """
    axes = {"madds": (finished, confirmed)}
    if latency is not None and not latency[0].empty:
        axes["latency"] = latency
    fronts = {axis: _front_status(f, c) for axis, (f, c) in axes.items()}
    # Before any confirmation there is nothing to test, and the page says so once.
    claims = [c for axis, (f, c_) in axes.items() if c_.confirm_of.notna().any()
              for c in _claims(f, c_, fronts[axis], axis, split)]
    claims = apply_holm(claims, alpha)
    holdout = bool(confirmed.holdout_acc.notna().any()) if len(confirmed) else False

    def view(axis: str, latency_view: Headline | None = None) -> Headline:
        sources: dict[str, dict[str, Claim]] = {}
        for c in claims:
            if c.axis == axis:
                sources.setdefault(c.source, {})[c.family] = c
        front = fronts[axis]
        return Headline(confirmed=any(p["seeds"] for ps in front.values() for p in ps),
                        holdout=holdout, sources=sources, front=front, latency=latency_view)

    return view("madds", view("latency") if "latency" in axes else None)
