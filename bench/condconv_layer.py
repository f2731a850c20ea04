"""CondConv2d vs nn.Conv2d, forward+backward, on every CondConv layer shape of the presets.

For each shape it times the path CondConv2d picks, every alternative exact path, and a static conv
of the same shape, in one run, and prints:
  ratio   CondConv (chosen path) time / static conv time
  bound   1 + E/(H*W): the FLOP-proportional cost of kernel mixing relative to the conv
  vs best chosen path time / fastest alternative (goal: <= 1.10)

Usage: python bench/condconv_layer.py [--device cpu|cuda] [--experts 8] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import torch
from torch.utils.benchmark import Timer

from condconv_nas.nn.layers import CondConv2d
from condconv_nas.nn.presets import get_preset, preset_names


@dataclass(frozen=True)
class Shape:
    """One conv of a CondConv block, as the bench times it."""

    batch: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    size: int

    def label(self) -> str:
        kind = "dw" if self.groups > 1 else "pw" if self.kernel == 1 else "conv"
        return (f"{self.in_channels}->{self.out_channels} {kind}{self.kernel}x{self.kernel}"
                f" s{self.stride} @{self.size} b{self.batch}")


def preset_shapes() -> list[Shape]:
    """Unique CondConv conv shapes: proxies at batch 64, full presets at 224 with batch 8."""
    shapes: list[Shape] = []
    for name in preset_names():
        spec = get_preset(name)
        batch = 64 if "proxy" in name else 8
        for b in spec.blocks():
            if not b.condconv:
                continue
            convs = [(b.in_channels, b.mid_channels, 1, 1, 1, b.in_size)] if b.has_expand else []
            convs += [(b.mid_channels, b.mid_channels, b.kernel, b.stride, b.mid_channels,
                       b.in_size),
                      (b.mid_channels, b.out_channels, 1, 1, 1, b.out_size)]
            for c in convs:
                shape = Shape(batch, *c)
                if shape not in shapes:
                    shapes.append(shape)
    return shapes


def time_paths(fns: dict, device: str, min_time: float, rounds: int) -> dict[str, float]:
    """Seconds per forward+backward of each fn: the least of `rounds` interleaved medians.

    Interleaving puts every path through the same machine state (other tenants, clocks), and the
    least median of several rounds is the estimate least disturbed by them.
    """
    timers = {k: Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
              for k, fn in fns.items()}
    for fn in fns.values():
        fn()  # warm-up: allocator, cuDNN/oneDNN algorithm choice
    if device == "cuda":
        torch.cuda.synchronize()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, timer in timers.items():
            best[k] = min(best[k], timer.blocked_autorange(min_run_time=min_time / rounds).median)
    return best


def bench_shape(shape: Shape, experts: int, device: str, min_time: float,
                dtype: torch.dtype | None = None, rounds: int = 5) -> dict:
    """Times of the static conv, the chosen path and every alternative for one shape."""
    torch.manual_seed(0)
    s = shape
    x = torch.randn(s.batch, s.in_channels, s.size, s.size, device=device, requires_grad=True)
    r = torch.rand(s.batch, experts, device=device, requires_grad=True)
    static = torch.nn.Conv2d(s.in_channels, s.out_channels, s.kernel, s.stride,
                             (s.kernel - 1) // 2, groups=s.groups, bias=False).to(device)
    cond = CondConv2d(s.in_channels, s.out_channels, s.kernel, s.stride, groups=s.groups,
                      num_experts=experts).to(device)

    def autocast():
        return torch.autocast(device, dtype=dtype, enabled=dtype is not None)

    # A dense upstream gradient, as BatchNorm's backward hands a conv in training: `.sum()` would
    # hand a stride-0 one, which sends the batched matmul's backward down a slow path.
    with torch.no_grad(), autocast():
        grad = torch.randn_like(static(x).float())

    def run_static():
        with autocast():
            y = static(x)
        y.float().backward(grad)

    def run_path(path: str):
        def run():
            cond.path = path
            with autocast():
                y = cond(x, r)
            y.float().backward(grad)
        return run

    chosen = cond.resolve_path(x)
    paths = ["grouped", "experts"] + (["bmm"] if s.kernel == 1 and s.groups == 1 else [])
    times = time_paths({"static": run_static, **{p: run_path(p) for p in paths}}, device,
                       min_time, rounds)
    out_pixels = cond.out_size(s.size) ** 2
    best = min(paths, key=times.get)
    return {
        "shape": asdict(s), "label": s.label(), "chosen": chosen, "best": best, "times_s": times,
        "ratio": times[chosen] / times["static"], "bound": 1 + experts / out_pixels,
        "vs_best": times[chosen] / times[best],
    }


def to_markdown(result: dict) -> str:
    """A README table of one saved run."""
    lines = [f"{result['device']}, torch {result['torch']}, {result.get('dtype', 'fp32')}, "
             f"{result['experts']} experts, forward+backward, ms", "",
             "| shape | conv | CondConv (path) | ratio | bound | ratio/bound | grouped | bmm "
             "| experts | chosen/best |", "|" + " --- |" * 10]
    for row in result["rows"]:
        t = {k: f"{v * 1e3:.3f}" for k, v in row["times_s"].items()}
        lines.append(f"| {row['label']} | {t['static']} | {t[row['chosen']]} ({row['chosen']}) "
                     f"| {row['ratio']:.2f} | {row['bound']:.2f} | {row['ratio'] / row['bound']:.2f} "
                     f"| {t['grouped']} | {t.get('bmm', '-')} | {t['experts']} "
                     f"| {row['vs_best']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per path and shape")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per shape")
    parser.add_argument("--quick", action="store_true", help="first 4 shapes only")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast (the GPU recipe)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="print a saved --json run as a table")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(to_markdown(json.load(f)))
        return 0

    shapes = preset_shapes()[: 4 if args.quick else None]
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}"
    dtype = torch.bfloat16 if args.bf16 else None
    print(f"CondConv2d ({args.experts} experts) vs nn.Conv2d, forward+backward, "
          f"{'bf16 autocast' if dtype else 'fp32'}, {name}, "
          f"torch {torch.__version__}")
    print(f"{'shape':<34} {'conv ms':>8} {'chosen':>8} {'ms':>8} {'ratio':>6} {'bound':>6} "
          f"{'/bound':>6} {'grouped':>8} {'bmm':>8} {'experts':>8} {'vs best':>7}")
    rows = []
    for shape in shapes:
        row = bench_shape(shape, args.experts, args.device, args.min_time, dtype, args.rounds)
        rows.append(row)
        t = {k: v * 1e3 for k, v in row["times_s"].items()}
        bmm = f"{t['bmm']:8.3f}" if "bmm" in t else f"{'-':>8}"
        print(f"{row['label']:<34} {t['static']:8.3f} {row['chosen']:>8} {t[row['chosen']]:8.3f} "
              f"{row['ratio']:6.2f} {row['bound']:6.2f} {row['ratio'] / row['bound']:6.2f} "
              f"{t['grouped']:8.3f} {bmm} {t['experts']:8.3f} {row['vs_best']:7.2f}", flush=True)
    within = sum(r["vs_best"] <= 1.10 for r in rows)
    print(f"chosen path within 10% of the fastest alternative: {within}/{len(rows)} shapes; "
          f"median distance from the bound: "
          f"{sorted(r['ratio'] / r['bound'] for r in rows)[len(rows) // 2]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "experts": args.experts,
                       "dtype": "bf16" if dtype else "fp32",
                       "rows": rows}, f, indent=1)
    return 0 if within == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
