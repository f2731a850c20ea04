"""Pareto fronts of (accuracy up, MAdds down). Torch-free."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pareto_front"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points of (accuracy to maximise, MAdds to minimise).

    A point is dominated when another has accuracy >= and MAdds <=, one of them strictly.
    Duplicates of a front point are all kept. Sorted by MAdds, then accuracy descending.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        acc, madds = points[i]
        if acc > best:
            front.append(i)
            best = acc
        elif acc == best and front and points[front[-1]] == (acc, madds):
            front.append(i)  # an exact duplicate of the last front point
    return front
