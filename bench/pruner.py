"""What the Pareto-aware pruner saves: a study run twice, pruner off and on, same sampler seed.

Prints the total training seconds of each run, the share saved, how many trials were pruned, and
whether the final Pareto front (val accuracy up, MAdds down) changed.

Usage: python bench/pruner.py studies/quickstart.yaml [--trials N] [--k 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import optuna

from condconv_nas.analysis.pareto import pareto_front
from condconv_nas.search.study import PrunerConfig, load_study_config, open_storage, run_search


def run(cfg, storage: str) -> list[optuna.trial.FrozenTrial]:
    """Run the study into a fresh storage and return its trials."""
    cfg = dataclasses.replace(cfg, storage=storage, workers=1)
    run_search(cfg, print_fn=lambda line: print("  " + line, flush=True))
    return optuna.load_study(study_name=cfg.name, storage=open_storage(storage)).get_trials()


def front(trials) -> set[str]:
    """Architecture keys on the front of the completed, feasible, trained trials."""
    done = [t for t in trials if t.state.name == "COMPLETE" and not t.user_attrs.get("infeasible")]
    return {done[i].user_attrs["arch_key"]
            for i in pareto_front([(t.values[0], t.values[1]) for t in done])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    cfg = load_study_config(args.study)
    if args.trials:
        cfg = dataclasses.replace(cfg, trials=args.trials)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, pruner in (("off", None), ("on", PrunerConfig(args.k, args.warmup))):
            print(f"pruner {label}:")
            trials = run(dataclasses.replace(cfg, pruner=pruner), str(Path(tmp) / f"{label}.journal"))
            results[label] = trials
    seconds = {k: sum(t.user_attrs.get("seconds", 0.0) for t in v if "reused_from" not in t.user_attrs)
               for k, v in results.items()}  # a reused architecture trained no time
    pruned = sum(t.state.name == "PRUNED" for t in results["on"])
    same = front(results["off"]) == front(results["on"])
    print(f"{cfg.name}, {cfg.trials} trials, k={args.k}, warm-up {args.warmup} epoch(s)")
    print(f"training seconds: pruner off {seconds['off']:.1f}, on {seconds['on']:.1f} "
          f"({100 * (1 - seconds['on'] / max(seconds['off'], 1e-9)):.1f}% saved); "
          f"{pruned} trial(s) pruned; final front {'unchanged' if same else 'changed'} "
          f"({len(front(results['off']))} vs {len(front(results['on']))} architectures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
