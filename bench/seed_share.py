"""How much seed noise does a front point share with its matched control at one seed index?

`bench/null_sim.py` takes the share of seed variance common to a point and its control (same
recipe seed: data order and augmentation) as a parameter (`--shared`, default 0.3), and power
depends on it. This measures it on a study's own proxy: K architectures sampled from the study's
space, each with its width control matched within 2% of its MAdds, every one trained at seed
indices 1..S and scored on the holdout split. Per pair, the correlation over seeds of the two
runs' deviations from their own means; the pooled figure is the mean of the pairs' covariances
over the mean of their variances (the share `--shared` stands for).

    python bench/seed_share.py studies/quickstart.yaml --pairs 3 --seeds 6
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv: list[str] | None = None) -> int:
    import optuna
    import torch

    from condconv_nas.nn.cost import count_cost
    from condconv_nas.nn.model import build_model
    from condconv_nas.search.baselines import matched_controls
    from condconv_nas.search.config import load_study_config, load_study_data
    from condconv_nas.search.match import adopt_stored_layout
    from condconv_nas.train.train import correct_mask, fit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=6)
    args = p.parse_args(argv)
    cfg = adopt_stored_layout(load_study_config(args.study))
    if cfg.holdout is None:
        raise SystemExit(f"{args.study}: its study was stored before holdout splits existed; "
                         "give a study file of another name")
    data = load_study_data(cfg)
    adapt = lambda s: cfg.space.for_data(s, data.in_channels, data.size, data.num_classes)  # noqa: E731
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed + 17))
    pairs = []
    while len(pairs) < args.pairs:
        spec = adapt(cfg.space.sample(sampler.ask()))
        madds = count_cost(spec).madds
        control = matched_controls(cfg.space, ("width",), madds, adapt=adapt).get("width")
        if madds <= cfg.budget_madds and control and len(control) == 1:
            pairs.append((spec, control[0].spec))

    def holdout_acc(spec, seed: int) -> float:
        recipe = dataclasses.replace(cfg.recipe, seed=cfg.recipe.seed + seed)
        torch.manual_seed(cfg.seed + seed)
        model = build_model(spec)
        fit(model, data, recipe)
        return float(correct_mask(model, data.holdout, data).float().mean())

    covs, varis, rows = [], [], []
    t0 = time.perf_counter()
    for i, (point, control) in enumerate(pairs):
        a = np.array([holdout_acc(point, s) for s in range(1, args.seeds + 1)])
        b = np.array([holdout_acc(control, s) for s in range(1, args.seeds + 1)])
        cov = float(np.cov(a, b, ddof=1)[0, 1])
        var = float((a.var(ddof=1) + b.var(ddof=1)) / 2)
        covs.append(cov)
        varis.append(var)
        rows.append((i, count_cost(point).madds, count_cost(control).madds, a.std(ddof=1),
                     b.std(ddof=1), float(np.corrcoef(a, b)[0, 1])))
        print(f"pair {i}: {rows[-1][1] / 1e6:.2f}M vs {rows[-1][2] / 1e6:.2f}M MAdds, seed sd "
              f"{100 * rows[-1][3]:.2f} / {100 * rows[-1][4]:.2f} pp, correlation over "
              f"{args.seeds} seeds {rows[-1][5]:+.2f}", flush=True)
    share = float(np.mean(covs) / np.mean(varis))
    # Pairs are the unit: resampling them says how far the pooled share is from settled.
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(pairs), (4000, len(pairs)))
    boot = np.asarray(covs)[idx].mean(1) / np.asarray(varis)[idx].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"pooled shared share of seed variance: {share:+.2f} (bootstrap over pairs, 95%: "
          f"[{lo:+.2f}, {hi:+.2f}]) over {len(pairs)} pairs x {args.seeds} seeds "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
