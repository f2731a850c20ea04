"""A 100-trial CIFAR-10 search on one GPU: eager with one worker against CUDA graphs with N per GPU.

Each configuration runs the same study (the cifar10_effnet_b0 space, random sampler, seed 0,
15 epochs a trial) from scratch in its own storage and prints wall time, mean GPU utilisation
(nvidia-smi, sampled every second), median images/s of a trial and total training images/s. The
data are the real CIFAR-10 pickles when $CONDCONV_NAS_DATA (or --data-dir) has them, else
synthetic 32x32x3 images of the same size (50,000 / 10,000, 10 classes) in an npz folder.
Goal: 100 trials in at most 20 minutes on one H100, >= 4x faster than eager with one worker.

Usage: python bench/gpu_study.py [--trials 100] [--epochs 15] [--per-gpu 1,2,4] [--json FILE]
       python bench/gpu_study.py --device cpu --trials 3 --epochs 1 --train-limit 1000   (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent


def cifar_source(data_dir: str | None, folder: Path) -> str:
    """`cifar10` when its pickles are found, else an npz folder of CIFAR-shaped synthetic data."""
    for base in filter(None, (data_dir, os.environ.get("CONDCONV_NAS_DATA"))):
        if (Path(base) / "cifar-10-batches-py" / "data_batch_1").exists():
            return "cifar10"
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 32, 32, 3))
    for name, n in (("train", 50_000), ("test", 10_000)):
        y = rng.integers(0, 10, n)
        x = (0.5 * templates[y] + 0.5 * rng.integers(0, 256, (n, 32, 32, 3))).astype(np.uint8)
        np.savez(folder / f"{name}.npz", images=x, labels=y)
    return f"npz:{folder}"


class GpuSampler(threading.Thread):
    """Mean GPU utilisation (%) from nvidia-smi, sampled every second while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout.split()
                self.samples.append(statistics.mean(float(v) for v in out))
            except (OSError, ValueError, subprocess.SubprocessError, statistics.StatisticsError):
                return

    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def run_config(name: str, dataset: str, args: argparse.Namespace, compile_mode: object,
               per_gpu: int, tmp: Path) -> dict:
    """Run one configuration's whole study; its wall time and throughput figures."""
    study = tmp / f"{name}.yaml"
    recipe = {"epochs": args.epochs, "compile": compile_mode}
    cfg = {"name": name, "space": str(ROOT / "search_spaces" / "cifar10_effnet_b0.yaml"),
           "dataset": dataset, "recipe": recipe, "trials": args.trials, "sampler": "random",
           "seed": 0, "device": args.device, "workers_per_gpu": per_gpu,
           "storage": str(tmp / f"{name}.journal"), "artifacts": str(tmp / f"{name}.art")}
    if args.train_limit:
        cfg["train_limit"] = args.train_limit
    if args.device == "cpu":
        cfg["workers"] = 1
    study.write_text(yaml.safe_dump(cfg))
    sampler = GpuSampler()
    if args.device == "cuda":
        sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "condconv_nas.cli", "search", str(study)],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    if proc.returncode:
        raise SystemExit(f"{name}: search failed:\n{proc.stderr[-2000:]}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from condconv_nas.store.storage import open_storage

    trials = optuna.load_study(study_name=name, storage=open_storage(cfg["storage"])).trials
    done = [t.user_attrs for t in trials if t.state.name == "COMPLETE"
            and not t.user_attrs.get("infeasible") and t.user_attrs.get("seconds")]
    images = sum(a["images_per_s"] * a["seconds"] for a in done if a.get("images_per_s"))
    compile_s = [a["compile_seconds"] for a in done if a.get("compile_seconds") is not None]
    return {"config": name, "compile": compile_mode, "workers_per_gpu": per_gpu,
            "trials": len(done), "wall_s": wall, "gpu_util_mean": sampler.mean(),
            "trial_images_per_s_median": statistics.median(a["images_per_s"] for a in done),
            "total_images_per_s": images / wall,
            "compile_s_median": statistics.median(compile_s) if compile_s else None,
            "eager_fallbacks": sum(bool(a.get("compile_note")) for a in done)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--per-gpu", default="1,2,4", help="workers per GPU to try with graphs")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--data-dir")
    parser.add_argument("--train-limit", type=int, help="smoke runs only")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "data").mkdir()
        dataset = cifar_source(args.data_dir, tmp_path / "data")
        print(f"{args.trials} trials x {args.epochs} epochs, cifar10_effnet_b0 space, data "
              f"{'CIFAR-10' if dataset == 'cifar10' else 'synthetic CIFAR-shaped'}, {args.device}")
        print(f"{'config':<22} {'trials':>6} {'wall s':>8} {'GPU %':>6} {'img/s trial':>11} "
              f"{'img/s total':>11} {'compile s':>9}")
        configs = [("eager_1", False, 1)] + [(f"graphs_{n}", None, n)
                                             for n in map(int, args.per_gpu.split(","))]
        for name, mode, n in configs:
            r = run_config(name, dataset, args, mode, n, tmp_path)
            rows.append(r)
            util = f"{r['gpu_util_mean']:6.0f}" if r["gpu_util_mean"] is not None else f"{'-':>6}"
            comp = f"{r['compile_s_median']:9.1f}" if r["compile_s_median"] is not None else f"{'-':>9}"
            print(f"{name:<22} {r['trials']:6d} {r['wall_s']:8.0f} {util} "
                  f"{r['trial_images_per_s_median']:11.0f} {r['total_images_per_s']:11.0f} {comp}",
                  flush=True)
    base = rows[0]["wall_s"]
    best = min(rows[1:], key=lambda r: r["wall_s"])
    print(f"fastest: {best['config']} in {best['wall_s'] / 60:.1f} min, "
          f"{base / best['wall_s']:.1f}x eager with one worker "
          f"(goal: <= 20 min and >= 4x on one H100)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
