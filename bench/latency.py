"""Every CondConv preset against its static twin: MAdds ratio beside measured cost ratios.

For each preset with CondConv layers and its static twin (the same network, CondConv off), in
one run: MAdds ratio; batch-1 latency ratio of the exported TorchScript graphs (the deployment
case) and of the eager deployment paths; large-batch inference throughput ratio; training
images/s ratio. Goals: training >= 0.8 x the inverse MAdds ratio; exported batch-1 latency of
condconv_efficientnet_b0_8e at 224 px <= 1.25 x its twin's (against a MAdds ratio of 1.06).

Usage: python bench/latency.py [--threads T] [--rounds N] [--only NAME] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from condconv_nas.export import _torchscript, deploy_copy
from condconv_nas.nn.cost import count_cost
from condconv_nas.nn.latency import measure_many, time_torchscript
from condconv_nas.nn.model import build_model
from condconv_nas.nn.presets import get_preset, preset_names
from condconv_nas.search.baselines import static_base

GOAL_EXPORT = ("condconv_efficientnet_b0_8e", 1.25)


def bench_preset(name: str, threads: int, rounds: int) -> dict:
    """Ratios CondConv / static twin for one preset."""
    spec = get_preset(name)
    twin_spec = static_base(spec)
    torch.manual_seed(0)
    model, twin = build_model(spec).eval(), build_model(twin_spec).eval()
    shape = (spec.in_channels, spec.input_size, spec.input_size)
    found = measure_many({"model": model, "twin": twin}, shape, threads=threads, rounds=rounds)
    example = torch.zeros(2, *shape)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"model": str(_torchscript(deploy_copy(model), example, Path(tmp) / "m.ts")),
                 "twin": str(_torchscript(twin, example, Path(tmp) / "t.ts"))}
        exported = time_torchscript(files, shape, threads=threads, rounds=rounds)
    m, t = found["model"], found["twin"]
    madds = count_cost(spec).madds / count_cost(twin_spec).madds
    return {
        "preset": name, "madds_ratio": madds, "batch": m.batch,
        "export_latency_ratio": exported["model"] / exported["twin"],
        "export_latency_ms": exported,
        "latency_ratio": m.latency_ms / t.latency_ms,
        "throughput_ratio": m.images_per_s / t.images_per_s,
        "train_ratio": m.train_images_per_s / t.train_images_per_s,
        "train_goal": 0.8 / madds, "paths": m.paths,
        "model": m.to_dict(), "twin": t.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", action="append", help="preset name (repeatable)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    names = args.only or [n for n in preset_names()
                          if any(b.condconv for b in get_preset(n).blocks())]
    from condconv_nas.nn.latency import describe_device

    device = f"{describe_device(torch.device('cpu'))}, {args.threads} threads"
    print(f"CondConv presets / static twins, CPU ({device}), torch {torch.__version__}")
    print(f"{'preset':<38} {'MAdds':>6} {'export b1':>9} {'eager b1':>8} {'infer bB':>8} "
          f"{'train':>6} {'train goal':>10}")
    rows, ok = [], True
    for name in names:
        row = bench_preset(name, args.threads, args.rounds)
        rows.append(row)
        print(f"{name:<38} {row['madds_ratio']:6.3f} {row['export_latency_ratio']:9.2f} "
              f"{row['latency_ratio']:8.2f} {row['throughput_ratio']:8.2f} "
              f"{row['train_ratio']:6.2f} {row['train_goal']:>9.2f}+", flush=True)
        ok &= row["train_ratio"] >= row["train_goal"]
        if name == GOAL_EXPORT[0]:
            ok &= row["export_latency_ratio"] <= GOAL_EXPORT[1]
    print("ratios are CondConv / static twin: latency (lower is better), images/s (higher is "
          "better); infer bB and train at each row's batch (256 proxies, 32 at 224 px)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__,
                                               "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
