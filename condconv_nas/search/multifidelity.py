"""Multi-objective asynchronous successive halving (MO-ASHA): rungs and the promotion rule.

A multi-fidelity search trains each sampled architecture for `min_epochs` (rung 0); a worker that
is free promotes an architecture from rung k to rung k+1 (eta times the epochs) when it ranks in
the top 1/eta of the results at rung k, else it samples a new one (Li et al. 2020, ASHA). Ranks
are those of NSGA-II on (accuracy up, MAdds down): non-dominated sorting, ties within a front
broken by crowding distance, as in the MO-ASHA of Schmucker et al. 2021. Torch- and Optuna-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LEARN_FROM", "MultiFidelity", "crowding_distances", "nondominated_ranks", "promotion_order",
           "to_promote"]


# What the sampler learns from (learnfrom.py): every rung's accuracy as it is, top-rung runs only,
# or each run's accuracy as its rank among its rung's finished runs.
LEARN_FROM = ("all", "top", "ranks")


@dataclass(frozen=True)
class MultiFidelity:
    """Epochs of the bottom and top rung, the reduction factor between rungs, and what the
    sampler learns from (one of LEARN_FROM)."""

    min_epochs: int = 1
    max_epochs: int = 9
    eta: int = 3
    learn_from: str = "ranks"  # bench/multifidelity.py: the most hypervolume a training second

    @property
    def rungs(self) -> tuple[int, ...]:
        """Epochs of each rung: min_epochs x eta^k below max_epochs, then max_epochs."""
        out, e = [], self.min_epochs
        while e < self.max_epochs:
            out.append(e)
            e *= self.eta
        return (*out, self.max_epochs)

    @property
    def top(self) -> int:
        """Index of the top rung, the only one whose results are fronts, claims and exports."""
        return len(self.rungs) - 1


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, MAdds): a is at least as accurate and as cheap as b, and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def nondominated_ranks(points: Sequence[tuple[float, float]]) -> list[int]:
    """Front index of each point (0: not dominated by any; 1: only by front 0; ...)."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = {i for i in left if not any(_dominates(points[j], points[i]) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def crowding_distances(points: Sequence[tuple[float, float]], members: Sequence[int]
                       ) -> dict[int, float]:
    """NSGA-II crowding distance of each member within its front (both ends infinite).

    MAdds enter on a log scale, the axis on which scaling curves are straight.
    """
    dist = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for axis in (lambda i: points[i][0], lambda i: math.log(max(points[i][1], 1.0))):
        order = sorted(members, key=axis)
        lo, hi = axis(order[0]), axis(order[-1])
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for prev, i, nxt in zip(order, order[1:], order[2:]):
            dist[i] += (axis(nxt) - axis(prev)) / (hi - lo)
    return dist


def promotion_order(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices best first: by front, then by crowding distance (wider spread first), then index."""
    ranks = nondominated_ranks(points)
    crowd: dict[int, float] = {}
    for r in set(ranks):
        crowd.update(crowding_distances(points, [i for i, x in enumerate(ranks) if x == r]))
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def to_promote(results: Mapping[int, Sequence[tuple[int, float, float]]],
               promoted: Mapping[int, set[int]], mf: MultiFidelity) -> tuple[int, int] | None:
    """The next (trial number, rung it leaves) to promote, or None.

    `results[k]` holds (number, accuracy, MAdds) of the finished runs at rung k, `promoted[k]`
    the numbers already promoted from rung k. Higher rungs are served first (ASHA), and within a
    rung the best-ranked candidate of the top floor(n/eta) that is not yet promoted.
    """
    for k in range(mf.top - 1, -1, -1):
        runs = list(results.get(k, ()))
        best = promotion_order([(acc, madds) for _, acc, madds in runs])[: len(runs) // mf.eta]
        for i in best:
            if runs[i][0] not in promoted.get(k, set()):
                return runs[i][0], k
    return None
