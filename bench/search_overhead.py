"""Search overhead per trial (sampler, storage, cost counting) as a fraction of trial time.

Runs a real study (TPE, journal storage, the fmnist_mbv2 space) where fit() is replaced by a sleep
of --fit-seconds, and reports, per window of trials, the time spent outside fit as a fraction of
the whole trial. Goal: <= 2% at trial 200 with a 1 s fit.

Usage: python bench/search_overhead.py [--trials 200] [--fit-seconds 1.0] [--sampler tpe]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

import condconv_nas.train.train as train
from condconv_nas.search.study import load_study_config, run_search, with_overrides

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--fit-seconds", type=float, default=1.0)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--space", default=str(ROOT / "search_spaces" / "fmnist_mbv2.yaml"))
    args = parser.parse_args(argv)

    in_fit = [0.0]  # fit seconds of the trial under way (0 for reused architectures)
    trained = [0]

    def sleeping_fit(model, data, recipe, on_epoch=None, **_):
        t0 = time.perf_counter()
        time.sleep(args.fit_seconds)
        if on_epoch:
            on_epoch(1, 0.5)
        in_fit[0] += time.perf_counter() - t0
        trained[0] += 1
        n = trained[0]
        # A smooth stand-in for accuracy so the sampler has something to model.
        return train.FitResult(val_acc=0.5 + 0.4 * (n % 7) / 7, test_acc=None,
                               curve=[{"epoch": 1, "val_acc": 0.5}], seconds=args.fit_seconds,
                               images_per_s=1.0, epochs_run=1)

    train.fit = sleeping_fit
    # Building the network is part of training, not of the search machinery: timed apart.
    import condconv_nas.nn.model as model_module

    build = model_module.build_model
    in_build = [0.0]

    def timed_build(spec):
        t0 = time.perf_counter()
        out = build(spec)
        in_build[0] += time.perf_counter() - t0
        return out

    model_module.build_model = timed_build
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "bench.yaml"
        study.write_text(yaml.safe_dump({"name": "bench", "space": args.space, "dataset": "synthetic",
                                         "trials": args.trials, "sampler": args.sampler,
                                         "recipe": {"epochs": 1, "batch_size": 64}}))
        cfg = with_overrides(load_study_config(study), budget_madds=10**12)  # every trial trains
        rows: list[tuple[float, float]] = []  # (end time, fit + build seconds) per trial
        builds: list[float] = []
        t0 = time.perf_counter()

        def on_line(line: str) -> None:
            if line.startswith("trial"):
                rows.append((time.perf_counter(), in_fit[0] + in_build[0]))
                builds.append(in_build[0])
                in_fit[0] = in_build[0] = 0.0

        run_search(cfg, print_fn=on_line)
    ends = [t0] + [r[0] for r in rows]
    trials = [(ends[i + 1] - ends[i], rows[i][1]) for i in range(len(rows))]
    trained_trials = [(w, f) for w, f in trials if f > 0]  # reused architectures skip fit
    print(f"{args.trials} trials ({len(trained_trials)} trained, the rest reused), sampler "
          f"{args.sampler}, journal storage, fit = sleep {args.fit_seconds:.2f} s")
    print(f"{'trained trials':>16} {'trial s':>9} {'overhead s':>11} {'overhead %':>11}")
    window = max(1, len(trained_trials) // 10)
    for start in range(0, len(trained_trials), window):
        chunk = trained_trials[start : start + window]
        wall = sum(w for w, _ in chunk) / len(chunk)
        over = wall - sum(f for _, f in chunk) / len(chunk)
        print(f"{start + 1:>7}-{start + len(chunk):<8} {wall:9.3f} {over:11.4f} "
              f"{100 * over / wall:10.2f}%")
    last = trained_trials[-window:]
    frac = 1 - sum(f for _, f in last) / sum(w for w, _ in last)
    print(f"overhead over the last {len(last)} trained trials: {100 * frac:.2f}% of trial time "
          f"({'meets' if frac <= 0.02 else 'misses'} the 2% goal); building the model took "
          f"{1e3 * sum(builds) / max(1, sum(b > 0 for b in builds)):.1f} ms a trial besides")
    return 0


if __name__ == "__main__":
    sys.exit(main())
