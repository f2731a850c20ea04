"""Does multi-fidelity search pay, and what should its sampler learn from? One training budget.

Each method runs with several sampler seeds on a real dataset (Fashion-MNIST by default). Plain
TPE and random train every architecture for `max_epochs`; multi-fidelity search (rungs
min_epochs x eta^k up to max_epochs) gets as many sampled architectures as fit the same
expected epochs, its sampler learning from every rung's accuracy (`mf-all`), from top-rung runs
only (`mf-top`) or from rung-normalised ranks (`mf-ranks`; learnfrom.py). For every run the
hypervolume of its top-fidelity front (architectures trained for max_epochs; one shared
reference point) is traced against the cumulative training seconds of all its runs, every rung
included. Printed: each method's final hypervolume and total seconds (mean and spread over
seeds); the hypervolume each multi-fidelity variant reaches at one equal compute (the least
total of any of their runs), per seed and paired with mf-all (the seeds pair: a reproducible
search draws slot n's sampler seed from (seed, n), so variants share their random start-up
trials); and the share of plain TPE's time multi-fidelity search needs to reach plain TPE's
final hypervolume (goal: <= 0.5).

Usage: python bench/multifidelity.py [--train-limit 2000] [--trials 8] [--seeds 3] [--jobs 2]
       [--clock cpu|wall] [--methods tpe,random,mf-all,mf-top,mf-ranks]
Results: bench/results/multifidelity.json (and the runs' journal in bench/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"


def study_file(method: str, seed: int, args: argparse.Namespace) -> Path:
    """The study file of one run: same space, data, recipe and seed for every method."""
    mf_trials = math.ceil(args.trials * args.max_epochs / expected_epochs(args))
    data = {"name": f"{method}-s{seed}", "space": str(ROOT / "search_spaces" / args.space),
            "dataset": args.dataset, "train_limit": args.train_limit, "val_size": args.val_size,
            "recipe": {"epochs": args.max_epochs}, "seed": seed, "workers": 1,
            "storage": str(OUT / "multifidelity.journal"),
            "artifacts": str(OUT / "multifidelity.artifacts"),
            "sampler": "random" if method == "random" else "tpe",
            "trials": mf_trials if method.startswith("mf-") else args.trials}
    if method.startswith("mf-"):
        data["multifidelity"] = {"min_epochs": args.min_epochs, "max_epochs": args.max_epochs,
                                 "eta": args.eta, "learn_from": method[3:]}
    path = OUT / f"multifidelity-{method}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def expected_epochs(args: argparse.Namespace) -> float:
    """Epochs one sampled architecture costs on average under successive halving."""
    from condconv_nas.search.multifidelity import MultiFidelity

    mf = MultiFidelity(args.min_epochs, args.max_epochs, args.eta)
    return sum(e / args.eta ** k for k, e in enumerate(mf.rungs))


def run_one(path: str) -> str:
    """Run (or resume) one study; returns its name."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from condconv_nas.search.study import load_study_config, run_search

    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda line: print(f"[{cfg.name}] {line}", flush=True))
    return cfg.name


def trace(name: str, clock: str = "cpu") -> pd.DataFrame:
    """Completed runs of one study in completion order: seconds, top-rung flag, acc, MAdds.

    `clock` cpu counts each run's process CPU seconds (one thread a run, so they are its training
    seconds on an otherwise idle core, whatever else the machine ran); wall counts wall seconds. A
    run that reused an identical architecture's result trained nothing and costs nothing.
    """
    import optuna

    from condconv_nas.store.storage import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(str(OUT / "multifidelity.journal")))
    rungs = (study.user_attrs.get("config", {}).get("multifidelity") or {}).get("rungs") or [0]
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state.name != "COMPLETE" or a.get("infeasible"):
            continue
        spent = 0.0 if "reused_from" in a else (
            a.get("cpu_seconds") if clock == "cpu" else a.get("seconds")) or 0.0
        rows.append({"done": t.datetime_complete, "seconds": spent,
                     "top": a.get("rung", 0) == len(rungs) - 1 and "reused_from" not in a,
                     "val_acc": t.values[0], "madds": t.values[1]})
    df = pd.DataFrame(rows).sort_values("done").reset_index(drop=True)
    df["elapsed"] = df.seconds.cumsum()
    return df


def hv_at(curve: list[tuple[float, float]], seconds: float) -> float:
    """Hypervolume a run had reached once it had trained `seconds` (0 before its first result)."""
    return max((hv for sec, hv in curve if sec <= seconds), default=0.0)


def equal_compute(curves: dict, variants: list[str], seeds: int) -> dict:
    """Each variant's hypervolume at the least total seconds of any variant's run, per seed, and
    paired differences from mf-all (mean and the t-interval over seeds); printed as a table."""
    budget = min(curves[(m, s)][-1][0] for m in variants for s in range(seeds))
    out: dict = {"seconds": budget, "hypervolume": {}, "per_1000_s": {}, "vs_all": {}}
    print(f"\nhypervolume at equal compute ({budget:.0f} training s, the least total of any "
          "multi-fidelity run), per seed")
    for m in variants:
        hv = [hv_at(curves[(m, s)], budget) for s in range(seeds)]
        out["hypervolume"][m] = hv
        out["per_1000_s"][m] = [1000 * h / budget for h in hv]
        line = f"{m:<10} " + " ".join(f"{h:6.3f}" for h in hv) + f"   mean {statistics.mean(hv):.3f}"
        if m != "mf-all" and "mf-all" in variants and seeds > 1:
            diff = [a - b for a, b in zip(hv, out["hypervolume"]["mf-all"])]
            from scipy.stats import t as student

            half = student.ppf(0.975, seeds - 1) * statistics.stdev(diff) / math.sqrt(seeds)
            mean = statistics.mean(diff)
            out["vs_all"][m] = {"mean": mean, "low": mean - half, "high": mean + half}
            line += f"   vs mf-all {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] (95% t)"
        print(line)
    return out


def per_second(table: dict, variants: list[str], seeds: int) -> dict:
    """Each variant's final hypervolume per 1,000 training seconds of its own run, per seed, and
    paired differences from mf-all (the issue's yardstick: hypervolume a training second)."""
    from scipy.stats import t as student

    out: dict = {"per_1000_s": {}, "vs_all": {}}
    print("\nfinal hypervolume per 1,000 training s, per seed")
    for m in variants:
        rate = [1000 * h / s for h, s in zip(table[m]["hypervolume"], table[m]["seconds"])]
        out["per_1000_s"][m] = rate
        line = f"{m:<10} " + " ".join(f"{r:6.2f}" for r in rate) + f"   mean {statistics.mean(rate):.2f}"
        if m != "mf-all" and "mf-all" in variants and seeds > 1:
            diff = [a - b for a, b in zip(rate, out["per_1000_s"]["mf-all"])]
            mean, se = statistics.mean(diff), statistics.stdev(diff) / math.sqrt(seeds)
            half = student.ppf(0.975, seeds - 1) * se
            p = 2 * student.sf(abs(mean) / se, seeds - 1) if se > 0 else math.nan
            out["vs_all"][m] = {"mean": mean, "low": mean - half, "high": mean + half, "p": p}
            line += (f"   vs mf-all {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] "
                     f"(95% t, p {p:.3f})")
        print(line)
    return out


def main(argv: list[str] | None = None) -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--space", default="fmnist_mbv2.yaml")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=8, help="plain searches' trials")
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    parser.add_argument("--out", default=str(OUT), help="folder of the journal and results")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="training seconds counted: process CPU time (default: robust to other "
                             "tenants on CPU) or wall time (use on a GPU)")
    parser.add_argument("--methods", default="tpe,random,mf-all,mf-top,mf-ranks",
                        help="comma-separated: tpe, random, mf-all, mf-top, mf-ranks")
    args = parser.parse_args(argv)
    OUT = Path(args.out).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    known = ("tpe", "random", "mf-all", "mf-top", "mf-ranks")
    if not methods or set(methods) - set(known):
        parser.error(f"--methods: each must be one of {', '.join(known)}")
    paths = [str(study_file(m, s, args)) for s in range(args.seeds) for m in methods]
    from joblib import Parallel, delayed

    Parallel(n_jobs=args.jobs, backend="loky")(delayed(run_one)(p) for p in paths)

    from condconv_nas.analysis.pareto import hypervolume, normalisation

    traces = {(m, s): trace(f"{m}-s{s}", args.clock) for m in methods for s in range(args.seeds)}
    norm = normalisation(*[t[t.top] for t in traces.values()])

    def hv_curve(df: pd.DataFrame) -> list[tuple[float, float]]:
        return [(float(df.elapsed[i]), hypervolume(df[:i + 1][df.top[:i + 1]], norm))
                for i in range(len(df))]

    curves = {k: hv_curve(df) for k, df in traces.items()}
    table = {}
    for m in methods:
        finals = [curves[(m, s)][-1] for s in range(args.seeds)]
        table[m] = {"seconds": [f[0] for f in finals], "hypervolume": [f[1] for f in finals],
                    "top_rung_runs": [int(traces[(m, s)].top.sum()) for s in range(args.seeds)],
                    "runs": [len(traces[(m, s)]) for s in range(args.seeds)]}
    print(f"\n{args.dataset}, {args.train_limit} training images, rungs "
          f"{args.min_epochs}..{args.max_epochs} (eta {args.eta}); {args.seeds} sampler seeds; "
          f"{args.clock} seconds")
    print(f"{'method':<14} {'runs':>9} {'top-rung':>9} {'train s (mean)':>15} "
          f"{'hypervolume mean +- sd':>24}")
    for m, row in table.items():
        hv = row["hypervolume"]
        sd = statistics.stdev(hv) if len(hv) > 1 else math.nan
        print(f"{m:<14} {statistics.mean(row['runs']):>9.1f} {statistics.mean(row['top_rung_runs']):>9.1f} "
              f"{statistics.mean(row['seconds']):>15.0f} {statistics.mean(hv):>14.3f} +- {sd:.3f}")
    result = {"settings": vars(args), "table": table,
              "curves": {f"{m}-s{s}": c for (m, s), c in curves.items()}}
    variants = [m for m in methods if m.startswith("mf-")]
    if variants:
        result["equal_compute"] = equal_compute(curves, variants, args.seeds)
        result["per_second"] = per_second(table, variants, args.seeds)
    if "tpe" in methods and variants:
        target = statistics.mean(table["tpe"]["hypervolume"])
        tpe_time = statistics.mean(table["tpe"]["seconds"])
        for m in variants:
            reach = [next((sec for sec, hv in curves[(m, s)] if hv >= target), math.nan) / tpe_time
                     for s in range(args.seeds)]
            print(f"{m} time to plain TPE's final hypervolume, as a share of TPE's time: "
                  + ", ".join("never" if math.isnan(r) else f"{r:.2f}" for r in reach)
                  + " (goal <= 0.5)")
            result.setdefault("share_to_reach_tpe", {})[m] = reach
    (OUT / "multifidelity.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
