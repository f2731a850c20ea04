"""What a reproducible search costs: idle worker time and wall clock against an unordered one.

Runs the same study file into fresh storages with 1, 2 and 4 workers, reproducible (trial n from
the seed, n and trials 0..n-workers, `reproducible.py`) and not (`reproducible: false`, samples
from whatever has finished), and prints per run:

- slot wait: the share of worker time spent waiting for an earlier result that sampling needs
  (the trials' `waited_s`, over workers x wall clock);
- idle: the share of worker time not inside a trial (start-up, claims, slot waits, the tail
  when no trial is left), from the trials' start and end times;
- wall: seconds, and its ratio to the unordered run with as many workers (one machine, one run
  after the other, so the ratio is measured in one run of this script); the two modes sample
  different architectures (the unordered run seeds a sampler per worker), so the seconds spent
  inside trials are printed too: the idle share is the ordering's price, the wall ratio also
  holds what was sampled;
- whether the reproducible run stored the same parameters as a second reproducible run
  (`--twice`).

    python bench/reproducible.py studies/quickstart.yaml --workers 2
    python bench/reproducible.py studies/tiny.yaml --workers 1 2 4 --twice
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(study: Path, workers: int, reproducible: bool, tmp: Path, trials: int | None) -> dict:
    """One search into a fresh storage; its timings and trials."""
    import optuna

    from condconv_nas.store.record import TrialRecord
    from condconv_nas.store.storage import open_storage

    data = yaml.safe_load(study.read_text())
    for key in ("space", "data_dir"):  # relative to the original file
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str((study.parent / data[key]).resolve())
    if isinstance(data.get("dataset"), str) and data["dataset"].startswith("npz:"):
        npz = data["dataset"][4:]
        data["dataset"] = "npz:" + str((study.parent / npz).resolve())
    folder = tmp / f"w{workers}-{'rep' if reproducible else 'free'}-{time.monotonic_ns()}"
    folder.mkdir()
    data.update(workers=workers, reproducible=reproducible, storage=str(folder / "s.journal"),
                artifacts=str(folder / "art"), **({"trials": trials} if trials else {}))
    path = folder / study.name
    path.write_text(yaml.safe_dump(data))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "condconv_nas.cli", "search", str(path)],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"search failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
    trials_ = optuna.load_study(study_name=data["name"],
                                storage=open_storage(str(folder / "s.journal"))).get_trials()
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials_
               if t.datetime_complete and t.datetime_start)
    waited = sum(TrialRecord.of(t.user_attrs).waited_s or 0.0 for t in trials_)
    return {"wall": wall, "busy": busy, "idle": max(0.0, 1 - busy / (workers * wall)),
            "slot_wait": waited / (workers * wall),
            "params": [(t.number, t.params, t.state.name) for t in trials_]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--trials", type=int, help="override the file's trial count")
    p.add_argument("--twice", action="store_true", help="run each reproducible search twice")
    args = p.parse_args(argv)
    print(f"{'workers':>7} {'mode':>12} {'wall s':>8} {'ratio':>6} {'in trials s':>11} "
          f"{'idle':>6} {'slot wait':>9} {'same trials':>11}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            free = run(args.study, w, False, Path(tmp), args.trials)
            rep = run(args.study, w, True, Path(tmp), args.trials)
            same = ""
            if args.twice:
                same = "yes" if run(args.study, w, True, Path(tmp), args.trials)["params"] == \
                    rep["params"] else "NO"
            for mode, r in (("unordered", free), ("reproducible", rep)):
                ratio = r["wall"] / free["wall"]
                print(f"{w:>7} {mode:>12} {r['wall']:>8.1f} {ratio:>6.2f} {r['busy']:>11.1f} "
                      f"{r['idle']:>6.1%} "
                      f"{r['slot_wait'] if mode == 'reproducible' else 0:>9.1%} "
                      f"{same if mode == 'reproducible' else '':>11}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
