"""Which CondConv computation ONNX Runtime runs fastest, for the ONNX export.

ONNX fixes a conv's `group` when the graph is built, so a graph free in the batch size cannot fold
the batch into the groups as TorchScript does. For each preset this exports, with torch's dynamo
exporter, the static twin and the CondConv network with its k x k CondConvs as (a) all experts
then mix (`experts`, free batch), (b) tap by tap on shifted views (`taps`, free batch) and (c)
the kernel mixed once and one grouped conv at a fixed batch of 1 (`grouped`, batch 1 only); then
times batch-1 inference of each in ONNX Runtime, interleaved, on the CPU.

Usage: python bench/onnx_paths.py [--only PRESET] [--threads T] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from condconv_nas.nn.layers import CondConv2d
from condconv_nas.nn.model import build_model
from condconv_nas.nn.presets import get_preset
from condconv_nas.search.baselines import static_base

VARIANTS = ("experts", "taps", "grouped")


def _paths(model: torch.nn.Module, kxk: str) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, CondConv2d):
            m.path = "bmm" if (m.kernel_size == 1 and m.groups == 1) else kxk
    return model


def _export(model: torch.nn.Module, x: torch.Tensor, file: Path, free_batch: bool) -> Path:
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if free_batch else None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(file), input_names=["images"],
                          dynamic_shapes=dyn, dynamo=True)
    return file


def bench_preset(name: str, threads: int, rounds: int, per_round: int = 10) -> dict:
    """Median batch-1 ms of the twin and each CondConv variant in ONNX Runtime."""
    import onnxruntime as ort

    spec = get_preset(name)
    torch.manual_seed(0)
    model, twin = build_model(spec), build_model(static_base(spec))
    x = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions["twin"] = _export(twin, x, Path(tmp) / "twin.onnx", True)
        for v in VARIANTS:
            sessions[v] = _export(_paths(model, v), x, Path(tmp) / f"{v}.onnx", v != "grouped")
        sessions = {k: ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
                    for k, f in sessions.items()}
    feed = {"images": x.numpy()}
    ref = sessions["twin"].run(None, feed)  # warm every session before timing
    with torch.no_grad():
        want = _paths(model, "grouped")(x).numpy()
    for k, s in sessions.items():
        for _ in range(5):
            out = s.run(None, feed)[0]
        if k != "twin":
            assert np.abs(out - want).max() < 1e-3, f"{name} {k}: ONNX output differs"
    del ref
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[k].append(time.perf_counter() - t0)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"preset": name, "ms": ms, "ratio": {k: ms[k] / ms["twin"] for k in VARIANTS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append",
                        help="preset (repeatable; default: the 8-expert B0 at 224 and at 32 px)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    names = args.only or ["condconv_efficientnet_b0_8e", "condconv_efficientnet_b0_8e_proxy32"]
    print(f"ONNX Runtime {ort.__version__}, CPU, {args.threads} threads, batch 1: ms (x twin)")
    print(f"{'preset':<38} {'twin':>8} " + " ".join(f"{v:>16}" for v in VARIANTS))
    rows = []
    for name in names:
        r = bench_preset(name, args.threads, args.rounds)
        rows.append(r)
        print(f"{name:<38} {r['ms']['twin']:8.2f} " + " ".join(
            f"{r['ms'][v]:8.2f} ({r['ratio'][v]:4.2f}x)" for v in VARIANTS), flush=True)
    print("experts and taps take any batch size; grouped is fixed at batch 1")
    if args.json:
        Path(args.json).write_text(json.dumps({"onnxruntime": ort.__version__,
                                               "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
