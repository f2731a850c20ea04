"""Baseline grids: the base network scaled by width, depth, compound and uniform experts. Torch-free.

Every family starts from the space's base with CondConv off and spans the search's MAdds range,
from the smallest architecture the space can sample to its budget:

- width: `width_mult` on every layer (stem, stages, head), the EfficientNet width rule;
- depth: `depth_mult` on every stage's repeats, rounded up;
- compound: depth alpha**phi and width beta**phi with alpha * beta**2 ~= 2 (Tan & Le 2019, with
  resolution held fixed because proxy data has one size): alpha = 1.2 as in the paper, beta = 1.29;
- experts: the base with CondConv in the positions the space searches, at uniform expert counts
  (the CondConv paper's comparison of expert counts against width multipliers, Fig. 3).

Each family includes the base itself (multiplier 1, phi 0, one expert), the shared anchor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..analysis.claims import MATCH_TOLERANCE
from ..nn.cost import count_cost
from ..nn.spec import ArchSpec, arch_key
from ..store.record import BASELINE_FAMILIES
from .space import SearchSpace

__all__ = ["ALPHA", "BETA", "FAMILIES", "MATCH_TOLERANCE", "BaselinePoint", "baseline_grid",
           "families_problem",
           "control_runs", "matched_controls", "search_range", "static_base"]

FAMILIES = BASELINE_FAMILIES  # the order of every table and figure


def families_problem(families: tuple[str, ...]) -> str | None:
    """What is wrong with a requested subset of FAMILIES (the caller names the argument), or None."""
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        what = f"{bad[0]!r} is not a family" if bad else "names no family"
        return f"{what}; choose from {', '.join(FAMILIES)}"
    return None
ALPHA, BETA = 1.2, 1.29  # depth and width growth per unit of phi; 1.2 * 1.29**2 = 2.00


@dataclass(frozen=True)
class BaselinePoint:
    """One baseline architecture: its family, its multiplier (or expert count), spec and MAdds."""

    family: str
    multiplier: float
    spec: ArchSpec
    madds: int

    @property
    def label(self) -> str:
        """Readable name such as 'width x1.25', 'compound phi=-0.5' or 'experts 4'."""
        if self.family == "compound":
            return f"compound phi={self.multiplier:g}"
        if self.family == "experts":
            return f"experts {self.multiplier:g}"
        return f"{self.family} x{self.multiplier:g}"


class _Extreme:
    """A trial stand-in that always picks the cheapest (or dearest) choice of a space."""

    def __init__(self, cheapest: bool) -> None:
        self.cheapest = cheapest

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return min(choices) if self.cheapest else max(choices)

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return low if self.cheapest else high


def static_base(spec: ArchSpec) -> ArchSpec:
    """The spec with CondConv off everywhere."""
    stages = tuple(dataclasses.replace(s, experts=(0,)) for s in spec.stages)
    return spec.replace(stages=stages, name=f"{spec.name}-static")


def search_range(space: SearchSpace, adapt=lambda s: s, budget: int | None = None
                 ) -> tuple[int, int]:
    """(MAdds of the cheapest architecture the space can sample, the budget: the study's if given)."""
    return (count_cost(adapt(space.sample(_Extreme(cheapest=True)))).madds,
            budget or space.budget_madds)


def _bracket(make, below, low: float, high: float, steps: int = 40) -> tuple[float, float]:
    """Bisect a multiplier interval: `below(madds)` holds at the low end, not at the high one
    (MAdds grow with the multiplier)."""
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if below(count_cost(make(mid)).madds) else (low, mid)
    return low, high


def _bisect(make, target: int, low: float, high: float, steps: int = 40) -> float:
    """The multiplier whose architecture's MAdds is nearest `target` (MAdds grows with it)."""
    return sum(_bracket(make, lambda m: m < target, low, high, steps)) / 2


def baseline_grid(space: SearchSpace, families: tuple[str, ...] = FAMILIES, points: int = 5,
                  adapt=lambda s: s, madds_range: tuple[int, int] | None = None
                  ) -> list[BaselinePoint]:
    """The baseline architectures of each family, `points` per scaling family, distinct within it.

    `adapt` fits a spec to the dataset (input size, channels, classes) before counting.
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"baseline family {unknown[0]!r} is unknown; choose from "
                         f"{', '.join(FAMILIES)}")
    lo, hi = madds_range or search_range(space, adapt)
    base = adapt(static_base(space.base))
    targets = ([round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (points - 1)))
                for i in range(points)] if points > 1 else [hi])
    grid: list[BaselinePoint] = []
    for family in families:
        if family == "experts":
            made = _experts_family(space, base)
        else:
            make = _maker(family, base)
            mults = [_pick(family, make, t) for t in targets] + [0.0 if family == "compound" else 1.0]
            made = [(m, make(m)) for m in sorted(set(mults))]
        seen: set[tuple] = set()
        for mult, spec in made:
            key = _layout(spec)
            if key in seen:
                continue  # rounding gave an architecture this family already has
            seen.add(key)
            grid.append(BaselinePoint(family, mult, spec, count_cost(spec).madds))
    return grid


def _layout(spec: ArchSpec) -> tuple:
    """The resolved network (every block's shape), so x1.0 and x1.01 that round alike are one."""
    return (spec.stem_width, spec.head_width, tuple(spec.blocks()))


def _maker(family: str, base: ArchSpec):
    if family == "width":
        return lambda m: base.replace(width_mult=m, name=f"{base.name}-w{m:g}")
    if family == "depth":
        return lambda m: base.replace(depth_mult=m, name=f"{base.name}-d{m:g}")
    return lambda phi: base.replace(depth_mult=ALPHA ** phi, width_mult=BETA ** phi,
                                    name=f"{base.name}-phi{phi:g}")


def _pick(family: str, make, target: int) -> float:
    """A readable multiplier (2 decimals; phi in steps of 0.05) nearest the target MAdds."""
    if family == "depth":
        # Depth moves in whole repeats: scan multiples of 0.05 and keep the nearest in log-MAdds.
        candidates = [round(0.05 * i, 2) for i in range(2, 121)]
        # Ties (the same repeats) go to the multiplier nearest 1: 'x0.5', not 'x0.1', for 1 of 2.
        return min(candidates, key=lambda m: (abs(math.log(count_cost(make(m)).madds / target)),
                                              abs(m - 1)))
    if family == "width":
        return round(_bisect(make, target, 0.1, 8.0), 2)
    return round(_bisect(make, target, -6.0, 6.0) * 20) / 20


def _experts_family(space: SearchSpace, base: ArchSpec) -> list[tuple[float, ArchSpec]]:
    """The base with uniform experts in the searched CondConv positions, one spec per count."""
    counts = sorted({e for c in space.stages if c.experts for e in c.experts if e > 1})
    searched = {c.stage - 1 for c in space.stages if c.experts}
    out: list[tuple[float, ArchSpec]] = [(1.0, base)]
    for e in counts:
        stages = tuple(dataclasses.replace(s, experts=(e,)) if i in searched else s
                       for i, s in enumerate(base.stages))
        out.append((float(e), base.replace(stages=stages, name=f"{base.name}-e{e}")))
    return out


def _configs(family: str, space: SearchSpace, base: ArchSpec, target: int
             ) -> tuple[tuple[float, ArchSpec] | None, tuple[float, ArchSpec] | None]:
    """The family's dearest configuration at or below `target` MAdds and its cheapest above."""
    if family in ("width", "compound"):
        make = _maker(family, base)
        low, high = (0.05, 8.0) if family == "width" else (-8.0, 6.0)
        if count_cost(make(low)).madds <= target <= count_cost(make(high)).madds:
            # MAdds rise in steps with the multiplier (channel rounding): the step's two sides.
            low, high = _bracket(make, lambda m: m <= target, low, high)
        made = [(low, make(low)), (high, make(high))]
    elif family == "depth":
        make = _maker(family, base)
        made = [(m, make(m)) for m in (round(0.05 * i, 2) for i in range(1, 161))]
    else:
        made = _experts_family(space, base)
    # Of the multipliers that give one network, the one nearest 1 names it ('depth x1', not x0.55).
    costed = sorted(((count_cost(spec).madds, abs(m - (0 if family == "compound" else 1)), m, spec)
                     for m, spec in made), key=lambda c: c[:2])
    below = [c for c in costed if c[0] <= target]
    above = [c for c in costed if c[0] > target]
    lo = max(below, key=lambda c: (c[0], -c[1])) if below else None
    hi = above[0] if above else None
    return tuple(None if c is None else (c[2], c[3]) for c in (lo, hi))  # type: ignore[return-value]


def matched_controls(space: SearchSpace, families: tuple[str, ...], madds: int,
                     adapt=lambda s: s, tolerance: float = MATCH_TOLERANCE
                     ) -> dict[str, list[BaselinePoint]]:
    """Per family, the control of a point with `madds` MAdds: one configuration within
    `tolerance` of it (matched), else the two that bracket it (cheaper first).

    Width and compound solve their multiplier (and phi) by bisection; depth (whole repeats) and
    experts (whole counts) choose from their configurations. A family that cannot reach the
    point from both sides, and has nothing within tolerance, gets no control.
    """
    base = adapt(static_base(space.base))
    out: dict[str, list[BaselinePoint]] = {}
    for family in families:
        lo, hi = _configs(family, space, base, madds)
        costed = [BaselinePoint(family, round(m, 4), spec, count_cost(spec).madds)
                  for m, spec in (c for c in (lo, hi) if c is not None)]
        near = [p for p in costed if abs(p.madds - madds) <= tolerance * madds]
        if near:
            out[family] = [min(near, key=lambda p: abs(p.madds - madds))]
        elif len(costed) == 2:
            out[family] = costed
    return out


def control_runs(space: SearchSpace, madds: list[int], ranges: dict[str, tuple[float, float]],
                 adapt=lambda s: s) -> list[dict]:
    """The queued runs (record fields) of the matched-cost controls of points with `madds`:
    for each family whose MAdds range (`ranges`, its stored baselines') reaches a point, one run
    per family and network, however many points it serves."""
    # A family's claims read its own runs. (A width and a compound control of one layout are
    # two runs: their specs record other multipliers.) Within a family one network is one run:
    # two points' bisections can land on multipliers a hair apart that round to the same
    # channels, and the claims pair a point with its controls by their MAdds, not their key.
    runs: dict[tuple[str, tuple], dict] = {}
    for m in sorted(set(madds)):
        reach = tuple(f for f, (lo, hi) in ranges.items() if lo <= m <= hi)
        for family, configs in matched_controls(space, reach, m, adapt=adapt).items():
            for c in configs:
                key = arch_key(c.spec)
                runs.setdefault((family, _layout(c.spec)), {
                    "baseline_spec": c.spec.to_dict(), "family": family,
                    "multiplier": c.multiplier,
                    "baseline_label": f"{family} control {c.madds:,} MAdds ({key[:6]})"})
    return list(runs.values())
