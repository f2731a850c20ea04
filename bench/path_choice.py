"""The CondConv path autotuner against the rule's path and the fastest, optionally tuned under load.

For each shape (forward+backward, as training runs it) a fresh tuner picks a path the way a run
does (`pathtune.tuned_path`: one warm-up and five interleaved rounds, and the rule's path kept
unless another beats it clearly), then every path is timed at length on the quiet machine
(bench/condconv_layer.py's interleaved least-median protocol), and the tuner's choice and the
fitted rule's are compared with the fastest. `--busy N` starts N processes that keep the cores
busy while the tuner times (and only then), as other jobs on a shared machine do. Goals: the
tuner within 10% of the fastest on every shape; with a busy neighbour, never slower than the
rule beyond 5% (timing noise).

Usage: python bench/path_choice.py [--shapes-from presets|random] [--busy 2] [--device cpu|cuda]
       [--min-time 0.3] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from condconv_layer import Shape, preset_shapes, time_paths  # noqa: E402

from condconv_nas.nn import pathtune  # noqa: E402
from condconv_nas.nn.layers import CondConv2d  # noqa: E402


def shapes(count: int, seed: int = 0) -> list[tuple[Shape, int]]:
    """`count` (shape, experts) pairs none of the presets has, the issue's example first."""
    known = set(preset_shapes())
    rng = random.Random(seed)
    grid = list(itertools.product((16, 24, 32, 48, 64, 96, 144, 192), ("pw", "dw3", "dw5"),
                                  (4, 7, 8, 14, 16), (1, 8, 64, 128), (2, 4, 8)))
    rng.shuffle(grid)
    out = [(Shape(64, 32, 96, 1, 1, 1, 16), 4)]  # 32->96 1x1 at 16x16, 4 experts, batch 64
    for c, kind, size, batch, experts in grid:
        if len(out) >= count:
            break
        if kind == "pw":
            shape = Shape(batch, c, rng.choice((c // 2, c * 2, c * 6)), 1, 1, 1, size)
        else:
            k = int(kind[-1])
            shape = Shape(batch, c * 6, c * 6, k, rng.choice((1, 2)), c * 6, size)
        if shape not in known and (shape, experts) not in out:
            out.append((shape, experts))
    return out


def _spin() -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while True:
        a = (a @ a).tanh()


@contextlib.contextmanager
def neighbours(count: int):
    """`count` processes that keep a core busy each while the block runs."""
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(count)]
    for p in procs:
        p.start()
    if procs:
        time.sleep(0.3)  # let them reach their loops
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def bench_one(shape: Shape, experts: int, device: str, min_time: float, rounds: int,
              busy: int = 0) -> dict:
    """The tuner's pick, the rule's and the fastest path's times for one shape."""
    torch.manual_seed(0)
    s = shape
    x = torch.randn(s.batch, s.in_channels, s.size, s.size, device=device, requires_grad=True)
    r = torch.rand(s.batch, experts, device=device, requires_grad=True)
    conv = CondConv2d(s.in_channels, s.out_channels, s.kernel, s.stride, groups=s.groups,
                      num_experts=experts).to(device)
    pathtune.clear()
    with neighbours(busy):
        tuned = pathtune.tuned_path(conv, x, r, conv.rule_path())
    rule = conv.rule_path()
    paths = pathtune.candidates(conv)

    # A dense upstream gradient, as BatchNorm's backward hands a conv in training: `.sum()` would
    # hand a stride-0 one, which sends the batched matmul's backward down a slow path.
    with torch.no_grad():
        grad = torch.randn_like(conv(x, r))

    def run(path: str):
        def call():
            conv.path = path
            conv(x, r).backward(grad)
        return call

    times = time_paths({p: run(p) for p in paths}, device, min_time, rounds)
    best = min(paths, key=times.get)
    return {"label": s.label() + f" e{experts}", "tuned": tuned, "rule": rule, "best": best,
            "times_s": times, "tuned_vs_best": times[tuned] / times[best],
            "rule_vs_best": times[rule] / times[best],
            "tuned_vs_rule": times[tuned] / times[rule]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", type=int, default=32)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per path and shape")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes-from", choices=("random", "presets"), default="random",
                        help="shapes outside the presets (default) or every preset's CondConv shapes")
    parser.add_argument("--experts", type=int, default=4, help="experts for preset shapes")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="processes keeping cores busy while the tuner times")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    pathtune.set_tuning(True)
    pathtune.set_cache_file(None)
    name = (torch.cuda.get_device_name() if args.device == "cuda"
            else f"{pathtune._device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads")
    print(f"CondConv path autotuner vs the fastest path, forward+backward, {name}, "
          f"torch {torch.__version__}; shapes: {args.shapes_from}; busy neighbours while "
          f"tuning: {args.busy}")
    print(f"{'shape':<40} {'tuned':>8} {'rule':>8} {'best':>8} {'tuned/best':>10} "
          f"{'rule/best':>9} {'tuned/rule':>10}")
    todo = (shapes(args.shapes) if args.shapes_from == "random"
            else [(s, args.experts) for s in preset_shapes()])
    rows = []
    for shape, experts in todo:
        row = bench_one(shape, experts, args.device, args.min_time, args.rounds, args.busy)
        rows.append(row)
        print(f"{row['label']:<40} {row['tuned']:>8} {row['rule']:>8} {row['best']:>8} "
              f"{row['tuned_vs_best']:10.2f} {row['rule_vs_best']:9.2f} "
              f"{row['tuned_vs_rule']:10.2f}", flush=True)
    not_slower = sum(r["tuned_vs_rule"] <= 1.05 for r in rows)
    print(f"tuned at least as fast as the rule (within 5%): {not_slower}/{len(rows)} (worst "
          f"{max(r['tuned_vs_rule'] for r in rows):.2f}x the rule's time; mean "
          f"{sum(r['tuned_vs_rule'] for r in rows) / len(rows):.3f}x)")
    tuned_ok = sum(r["tuned_vs_best"] <= 1.10 for r in rows)
    rule_ok = sum(r["rule_vs_best"] <= 1.10 for r in rows)
    worst = max(r["tuned_vs_best"] for r in rows)
    print(f"within 10% of the fastest: tuner {tuned_ok}/{len(rows)} (worst {worst:.2f}x), "
          f"rule {rule_ok}/{len(rows)} (worst {max(r['rule_vs_best'] for r in rows):.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__,
                                               "rows": rows}, indent=1))
    return 0 if tuned_ok == len(rows) and not_slower == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
