"""What keeping freed memory (glibc mallopt) buys a CPU proxy run: fresh processes, interleaved.

Each repeat trains the MobileNetV2 proxy for one epoch on a Fashion-MNIST subset and evaluates
it, once with glibc's default allocator settings (CONDCONV_NAS_MALLOC=system) and once as `fit`
runs by default, each in a fresh process; prints wall, user and system seconds and the speed-up.

Usage: python bench/cpu_memory.py [--train-limit 2000] [--batch 64] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, os, sys, time
import torch
from condconv_nas.train.data import load_dataset
from condconv_nas.nn.model import build_model
from condconv_nas.nn.presets import get_preset
from condconv_nas.train.train import Recipe, fit, keep_freed_memory
a = json.loads(sys.argv[1])
data = load_dataset(a["dataset"], train_limit=a["train_limit"], val_size=a["val_size"])
torch.manual_seed(0)
model = build_model(get_preset("mobilenet_v2_proxy28"))
t0, c0 = time.perf_counter(), os.times()
fit(model, data, Recipe(epochs=1, batch_size=a["batch"], lr=0.1))
c1 = os.times()
print(json.dumps({"wall": time.perf_counter() - t0, "user": c1.user - c0.user,
                  "sys": c1.system - c0.system, "kept": keep_freed_memory()}))
"""


def run(args: argparse.Namespace, system: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if system:
        env["CONDCONV_NAS_MALLOC"] = "system"
    else:
        env.pop("CONDCONV_NAS_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(vars(args))], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"system": [], "kept": []}
    for _ in range(args.repeats):  # interleaved: drift on the machine hits both alike
        runs["system"].append(run(args, system=True))
        runs["kept"].append(run(args, system=False))
    print(f"{args.dataset}, {args.train_limit} training + {args.val_size} validation images, "
          f"batch {args.batch}, {args.threads} thread(s), {args.repeats} repeats (median)")
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "user", "sys")}
           for k, v in runs.items()}
    for k, m in med.items():
        print(f"  {k:<7} wall {m['wall']:6.1f} s  user {m['user']:6.1f} s  system {m['sys']:6.1f} s")
    print(f"speed-up from keeping freed memory: {med['system']['wall'] / med['kept']['wall']:.2f}x "
          f"(allocator tuned: {all(r['kept'] for r in runs['kept'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
