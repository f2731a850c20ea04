"""Training images/s of a CondConv proxy against the same network with static convs, in one run.

Prints each network's images/s and MAdds, the throughput ratio CondConv/static, and the inverse
MAdds ratio static/CondConv. Goal: throughput ratio >= 0.8 x inverse MAdds ratio.

Usage: python bench/train_throughput.py [--device cpu|cuda] [--preset NAME] [--batch-size B]
       [--steps N] [--rounds R] [--compile [MODE]] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from condconv_nas.nn.cost import count_cost
from condconv_nas.nn.model import build_model
from condconv_nas.nn.presets import get_preset
from condconv_nas.train.data import Dataset, Split, augment, normalize
from condconv_nas.train.train import _param_groups, _to_channels_last


def synthetic_split(spec, n: int, device: str) -> Dataset:
    """Random uint8 images of the spec's input shape, resident on the device."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, spec.in_channels, spec.input_size, spec.input_size),
                           generator=g, dtype=torch.uint8)
    labels = torch.randint(0, spec.num_classes, (n,), generator=g)
    split = Split(images, labels).to(device)
    return Dataset("bench", split, split, split, spec.num_classes, (0.5,) * spec.in_channels,
                   (0.25,) * spec.in_channels, flip=True, pad=2)


def make_step(spec, data: Dataset, batch: int, device: str, compile_mode: str | None):
    """One training step of the fit() recipe (augment, bf16 on GPU, channels_last, SGD)."""
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    _to_channels_last(model)
    step_model = (torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
                  if compile_mode else model)
    opt = torch.optim.SGD(_param_groups(model, 5e-5), lr=0.01, momentum=0.9, nesterov=True)
    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = device == "cuda"

    def step() -> None:
        idx = torch.randint(0, len(data.train), (batch,), generator=gen, device=device)
        x = normalize(augment(data.train.images[idx], data, gen), data)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(x)
        loss = F.cross_entropy(logits.float(), data.train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def images_per_s(step, batch: int, steps: int, device: str) -> float:
    """Training images per second over `steps` steps."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="condconv_efficientnet_b0_8e_proxy28")
    parser.add_argument("--static", default=None, help="static twin (default: the preset, no CondConv)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best is kept")
    parser.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                        help="torch.compile both networks (mode: default, reduce-overhead, ...)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    cond_spec = get_preset(args.preset)
    static_spec = (get_preset(args.static) if args.static else cond_spec.replace(
        name=f"{cond_spec.name} (experts off)",
        stages=tuple(s.__class__(**{**s.__dict__, "experts": (0,)}) for s in cond_spec.stages)))
    data = synthetic_split(cond_spec, 4096, args.device)
    nets = {"condconv": cond_spec, "static": static_spec}
    steps = {k: make_step(s, data, args.batch_size, args.device, args.compile)
             for k, s in nets.items()}
    for step in steps.values():  # warm-up (and compilation)
        for _ in range(3):
            step()
    best = {k: 0.0 for k in nets}
    for _ in range(args.rounds):  # interleaved, so both see the same machine state
        for k, step in steps.items():
            best[k] = max(best[k], images_per_s(step, args.batch_size, args.steps, args.device))
    madds = {k: count_cost(s).madds for k, s in nets.items()}
    ratio, inverse = best["condconv"] / best["static"], madds["static"] / madds["condconv"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"{device}, torch {torch.__version__}, batch {args.batch_size}, "
          f"{'bf16 autocast' if args.device == 'cuda' else 'fp32'}, channels_last"
          f"{f', torch.compile ({args.compile})' if args.compile else ''}")
    for k, spec in nets.items():
        print(f"{k:<9} {spec.name:<50} {madds[k] / 1e6:7.2f}M MAdds {best[k]:9.0f} img/s")
    verdict = "meets" if ratio >= 0.8 * inverse else "misses"
    print(f"throughput ratio {ratio:.3f}, inverse MAdds ratio {inverse:.3f}, "
          f"ratio / inverse = {ratio / inverse:.3f} ({verdict} the 0.8 goal)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "batch": args.batch_size, "compile": args.compile,
                       "images_per_s": best, "madds": madds, "ratio": ratio,
                       "inverse_madds_ratio": inverse}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
