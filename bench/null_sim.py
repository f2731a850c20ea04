"""Whole simulated studies through the report's own claim code: false-claim rate and power.

Each simulated study runs the protocol the tool runs, with a known truth:

- a search that selects each front point as the best of N single validation runs (`--pool` per
  point, spread over the MAdds range), so a point's validation luck is selected for;
- an architecture-by-split effect (`--split-sd`, pp) drawn independently for the validation and
  the holdout split, and independently for every architecture (a point and each control);
- confirmation: seeds 1..S scored on the holdout split, seed noise (`--sigma`, pp) with a share
  (`--shared`) common to a point and its controls at the same seed index;
- controls per family at the point's MAdds: width and compound matched within 2% (a random
  mismatch inside the tolerance), depth on a ladder of whole repeats (a config every 15% of
  MAdds) that can only bracket, each ladder config one architecture shared by the points in its
  gap;
- truths that bend: accuracy rises 5 pp over the range in log-MAdds, linearly (curvature 0) up to
  strongly saturating (curvature 1); a true gain (`--gain`, in seed sds) lifts every front point.

The claims are made by `condconv_nas.analysis.claims` (`pair`, `family_claim`, `apply_holm`): no second
implementation of the statistics. A study makes a false claim when any family's claim is
significant while the true gain is 0 (gain or loss: both are claims); power is the share of
studies with a true gain in which every family's claim is a significant gain. `--grid` (baseline
grid points) is swept to show that it no longer enters a claim: the grid only describes.

    python bench/null_sim.py                      # the default sweep (about 5 minutes, 2 cores)
    python bench/null_sim.py --sigma 1 --seeds 3 --front 4 --gain 2 --studies 2000 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from condconv_nas.analysis.claims import Arch, apply_holm, family_claim, pair  # noqa: E402

LOW, LOG_RANGE = 2e6, math.log(4.0)  # the MAdds range searched: 2M to 8M
RISE = 0.05                # accuracy gained over that range (5 pp)
DEPTH_STEP = 1.15          # one more repeat: +15% MAdds


@dataclass(frozen=True)
class Regime:
    """One simulated setting; sigma and split_sd in pp, gain in seed sds."""

    sigma: float = 1.0
    grid: int = 3
    seeds: int = 3
    front: int = 3
    curvature: float = 0.5
    split_sd: float = 0.0
    gain: float = 0.0
    studies: int = 2000
    shared: float = 0.3
    pool: int = 10
    seed: int = 0


def truth(madds: np.ndarray | float, curvature: float) -> np.ndarray:
    """True accuracy at `madds`, rising RISE over the range in log-MAdds (bending with curvature)."""
    u = np.log(np.asarray(madds, float) / LOW) / LOG_RANGE
    if curvature <= 0:
        return 0.85 + RISE * u
    k = 6.0 * curvature
    return 0.85 + RISE * (1 - np.exp(-k * u)) / (1 - math.exp(-k))


def one_study(r: Regime, rng: np.random.Generator) -> tuple[bool, bool]:
    """(any claim was made, every family claimed a gain) for one simulated study."""
    sigma, split = r.sigma / 100, r.split_sd / 100
    gain = r.gain * sigma
    # Seed indices 1..S: a component shared by every run at that index, and each run's own.
    shared = rng.normal(0, sigma * math.sqrt(r.shared), r.seeds)
    own_sd = sigma * math.sqrt(1 - r.shared)

    def arch(key: str, madds: float, lift: float = 0.0) -> Arch:
        """A fresh architecture at `madds`: its holdout accuracy by seed index."""
        base = float(truth(madds, r.curvature)) + lift + rng.normal(0, split)
        return Arch(key, madds, {s + 1: base + shared[s] + rng.normal(0, own_sd)
                                 for s in range(r.seeds)})

    # The front: per MAdds bin, the best of `pool` single validation runs (the holdout effect
    # of the winner is drawn fresh: independent of the validation luck it was selected for).
    archs = []
    for b in range(r.front):
        m = LOW * np.exp(LOG_RANGE * rng.uniform(b / r.front, (b + 1) / r.front, r.pool))
        val = truth(m, r.curvature) + gain + rng.normal(0, split, r.pool) + rng.normal(0, sigma, r.pool)
        archs.append(arch(f"#{b}", float(m[int(np.argmax(val))]), gain))
    claims = []
    for family in ("width", "compound"):  # solved to within 2% of each point
        controls = [arch(f"{family}{i}", a.cost * math.exp(rng.uniform(-1, 1) * 0.99 * math.log(1.02)))
                    for i, a in enumerate(archs)]
        pairings = [pair(a, [c]) for a, c in zip(archs, controls)]
        claims.append(family_claim("search", family, pairings))
    # Depth: a ladder of whole repeats at a random offset; each config one architecture, shared
    # by the points in its gap; a rung within 2% of a point is matched, as in the tool.
    offset = rng.uniform(0, 1)
    ladder: dict[int, Arch] = {}
    pairings = []
    for a in archs:
        k = math.floor(math.log(a.cost / LOW) / math.log(DEPTH_STEP) - offset)
        for j in (k, k + 1):
            if j not in ladder:
                ladder[j] = arch(f"depth{j}", LOW * DEPTH_STEP ** (j + offset))
        pairings.append(pair(a, [ladder[k], ladder[k + 1]]))
    claims.append(family_claim("search", "depth", pairings))
    claims = apply_holm(claims)
    any_claim = any(c.significant for c in claims)
    all_gain = all(c.significant and c.direction == "gain" for c in claims)
    return any_claim, all_gain


def run_regime(r: Regime) -> dict:
    """Simulate `r.studies` studies; the rates with a 95% Monte Carlo upper bound."""
    rng = np.random.default_rng([r.seed, int(r.sigma * 1000), r.seeds, r.front,
                                 int(r.curvature * 100), int(r.split_sd * 1000), int(r.gain * 100),
                                 r.grid])
    claims = gains = 0
    for _ in range(r.studies):
        c, g = one_study(r, rng)
        claims += c
        gains += g
    upper = float(stats.beta.ppf(0.975, claims + 1, r.studies - claims)) if claims < r.studies else 1.0
    out = asdict(r)
    out.update(false_claim_rate=claims / r.studies if r.gain == 0 else None,
               false_claim_upper95=upper if r.gain == 0 else None,
               power=gains / r.studies if r.gain > 0 else None)
    return out


def default_sweep(studies: int) -> list[Regime]:
    """No-gain regimes over seed sd 0.1-3 pp, 2-5 grid points, 2-5 seeds, 1-6 front points,
    split sd 0 to twice the seed sd and three curvatures; then the power regime."""
    out = []
    for sigma, grid, seeds, front, split, curv in itertools.product(
            (0.1, 1.0, 3.0), (2, 5), (2, 5), (1, 3, 6), (0.0, 1.0, 2.0), (0.0, 0.5, 1.0)):
        out.append(Regime(sigma=sigma, grid=grid, seeds=seeds, front=front, curvature=curv,
                          split_sd=split * sigma, studies=studies))
    out.append(Regime(sigma=1.0, seeds=3, front=4, gain=2.0, studies=studies))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kind in (("sigma", float), ("grid", int), ("seeds", int), ("front", int),
                       ("curvature", float), ("split-sd", float), ("gain", float),
                       ("shared", float), ("pool", int)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--studies", type=int, default=2000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", action="store_true", help="one JSON record per regime")
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items()
             if k in Regime.__dataclass_fields__ and v is not None and k != "studies"}
    regimes = ([Regime(studies=args.studies, **given)] if given else default_sweep(args.studies))
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_regime, regimes))
    if args.json:
        for rec in results:
            print(json.dumps(rec))
        return 0
    print(f"{'sigma':>5} {'grid':>4} {'seeds':>5} {'front':>5} {'curv':>4} {'split':>5} "
          f"{'gain':>4} {'false':>6} {'upper95':>7} {'power':>6}")
    for rec in results:
        f = "" if rec["false_claim_rate"] is None else f"{rec['false_claim_rate']:.4f}"
        u = "" if rec["false_claim_upper95"] is None else f"{rec['false_claim_upper95']:.4f}"
        w = "" if rec["power"] is None else f"{rec['power']:.3f}"
        print(f"{rec['sigma']:>5g} {rec['grid']:>4} {rec['seeds']:>5} {rec['front']:>5} "
              f"{rec['curvature']:>4g} {rec['split_sd']:>5g} {rec['gain']:>4g} {f:>6} {u:>7} {w:>6}")
    nulls = [r for r in results if r["gain"] == 0]
    worst = max(nulls, key=lambda r: r["false_claim_rate"]) if nulls else None
    if worst:
        print(f"worst no-gain regime: false-claim rate {worst['false_claim_rate']:.4f} (95% upper "
              f"{worst['false_claim_upper95']:.4f}) at sigma {worst['sigma']}, seeds "
              f"{worst['seeds']}, front {worst['front']}, curvature {worst['curvature']}, "
              f"split sd {worst['split_sd']}")
    powers = [r for r in results if r["gain"] > 0]
    for r in powers:
        print(f"power at a true gain of {r['gain']:g} seed sds, {r['front']} front points, "
              f"{r['seeds']} seeds, sigma {r['sigma']} pp: {r['power']:.3f}")
    ok = all(r["false_claim_rate"] <= 0.05 and r["false_claim_upper95"] <= 0.06 for r in nulls)
    print("goal (every no-gain regime at most 5%, upper bound at most 6%): "
          + ("met" if ok else "NOT met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
