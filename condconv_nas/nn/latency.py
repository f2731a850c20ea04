"""Measured cost: batch-1 latency, large-batch throughput and training images/s, in isolation.

The protocol follows timm's benchmark.py: warm-up iterations, then timed iterations, with
channels_last and bf16 as flags. Several models (a CondConv network and its static twin) are
measured in interleaved rounds, so that clock changes and other tenants fall on all of them
alike; figures are medians with the 10th and 90th percentiles as the spread. Inference runs the
deployment paths (`layers.set_deploy_paths`, what an exported graph computes); training runs the
paths a study trains with (measured per shape, see pathtune).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .layers import CondConv2d, set_deploy_paths

__all__ = ["Latency", "default_batch", "describe_device", "measure", "measure_latency", "measure_many",
           "table_lines", "time_torchscript", "twin_record"]


@dataclass(frozen=True)
class Latency:
    """One model's measured cost and the conditions it was measured under."""

    latency_ms: float            # median batch-1 forward
    latency_ms_p10: float
    latency_ms_p90: float
    images_per_s: float          # median large-batch forward throughput
    images_per_s_p10: float
    images_per_s_p90: float
    train_images_per_s: float | None  # median forward+backward+SGD step throughput
    device: str
    threads: int
    batch: int
    precision: str
    channels_last: bool
    torch: str
    samples: int                 # batch-1 calls timed
    paths: dict[str, dict[str, int]] = field(default_factory=dict)  # mode -> path -> layers

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, figures rounded to what the timing resolves."""
        out = asdict(self)
        for k in ("latency_ms", "latency_ms_p10", "latency_ms_p90"):
            out[k] = round(out[k], 4)
        for k in ("images_per_s", "images_per_s_p10", "images_per_s_p90", "train_images_per_s"):
            out[k] = None if out[k] is None else round(out[k], 1)
        return out


def describe_device(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU's model and the threads used."""
    from .pathtune import _device_name

    return _device_name(device)


def default_batch(input_size: int) -> int:
    """Throughput batch: 256 for proxy-sized inputs (timm's default), 32 at ImageNet sizes."""
    return 256 if input_size <= 64 else 32


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    saved = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)


def _path_counts(model: nn.Module, run: Callable[[], Any]) -> dict[str, int]:
    """Which path each CondConv layer takes during one call of `run`."""
    seen: Counter[str] = Counter()

    def hook(layer, args):
        seen[layer.resolve_path(args[0], args[1])] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, CondConv2d)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return dict(seen)


class _Runner:
    """One model's three timed calls: batch-1 forward, large-batch forward, one training step."""

    def __init__(self, model: nn.Module, shape: tuple[int, int, int], batch: int,
                 device: torch.device, bf16: bool, channels_last: bool, train: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.device, self.bf16 = device, bf16
        self.infer = set_deploy_paths(copy.deepcopy(model)).to(device, memory_format=fmt).eval()
        self.one = torch.randn(1, *shape, device=device).contiguous(memory_format=fmt)
        self.many = torch.randn(batch, *shape, device=device).contiguous(memory_format=fmt)
        self.trainee = None
        if train:  # a copy: measuring never changes the caller's weights
            self.trainee = copy.deepcopy(model).to(device, memory_format=fmt).train()
            self.opt = torch.optim.SGD(self.trainee.parameters(), lr=1e-4, momentum=0.9)
            classes = self.trainee(self.one.expand(2, -1, -1, -1)).shape[1]
            self.labels = torch.randint(0, classes, (batch,), device=device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def forward_one(self) -> None:
        with self._autocast():
            self.infer(self.one)

    @torch.no_grad()
    def forward_many(self) -> None:
        with self._autocast():
            self.infer(self.many)

    def step(self) -> None:
        assert self.trainee is not None
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = nn.functional.cross_entropy(self.trainee(self.many), self.labels)
        loss.backward()
        self.opt.step()


def _interleaved(calls: dict[Any, tuple[Callable[[], float], int]], rounds: int
                 ) -> dict[Any, list[float]]:
    """Seconds of each timed call, round robin: every round runs each call its count of times."""
    samples: dict[Any, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, (timed, count) in calls.items():
            samples[k] += [timed() for _ in range(count)]
    return samples


def _timer(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> Callable[[], float]:
    """`fn` as a call returning its wall seconds; `sync` waits for the device on both sides."""
    def timed() -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start
    return timed


def measure_many(models: dict[str, nn.Module], shape: tuple[int, int, int], *,
                 device: str | torch.device = "cpu", batch: int | None = None,
                 threads: int | None = None, bf16: bool = False, channels_last: bool = False,
                 train: bool = True, rounds: int = 5, per_round: int = 10,
                 warmup: int = 5) -> dict[str, Latency]:
    """Measure several models (C, H, W inputs) in interleaved rounds; name -> Latency.

    Each round times `per_round` batch-1 forwards, one large-batch forward and one training step
    of every model in turn, after `warmup` untimed batch-1 calls and one untimed call of each
    other kind (allocator, oneDNN/cuDNN algorithm and CondConv path choice settle there).
    """
    device = torch.device(device)
    batch = batch or default_batch(shape[-1])
    with _threads(threads if device.type == "cpu" else None) as used:
        runners = {k: _Runner(m, shape, batch, device, bf16, channels_last, train)
                   for k, m in models.items()}
        calls: dict[tuple[str, str], tuple[Callable[[], float], int]] = {}
        for name, r in runners.items():
            for _ in range(warmup):
                r.forward_one()
            r.forward_many()
            calls[name, "one"] = (_timer(r.forward_one, r._sync), per_round)
            calls[name, "many"] = (_timer(r.forward_many, r._sync), 1)
            if r.trainee is not None:
                r.step()
                calls[name, "step"] = (_timer(r.step, r._sync), 1)
        timed = _interleaved(calls, rounds)
        out = {}
        for name, r in runners.items():
            s = {kind: timed.get((name, kind), []) for kind in ("one", "many", "step")}
            paths = {"batch 1": _path_counts(r.infer, r.forward_one)}
            if r.trainee is not None:
                paths[f"train batch {batch}"] = _path_counts(r.trainee, r.step)
            ips = [batch / t for t in s["many"]]
            out[name] = Latency(
                latency_ms=statistics.median(s["one"]) * 1e3,
                latency_ms_p10=_percentile(s["one"], 10) * 1e3,
                latency_ms_p90=_percentile(s["one"], 90) * 1e3,
                images_per_s=statistics.median(ips), images_per_s_p10=_percentile(ips, 10),
                images_per_s_p90=_percentile(ips, 90),
                train_images_per_s=(statistics.median(batch / t for t in s["step"])
                                    if s["step"] else None),
                device=describe_device(device), threads=used if device.type == "cpu" else 0,
                batch=batch, precision="bf16" if bf16 else "fp32", channels_last=channels_last,
                torch=torch.__version__, samples=len(s["one"]),
                paths={k: v for k, v in paths.items() if v})
    return out


def measure_latency(model: nn.Module, shape: tuple[int, int, int], *,
                    device: str | torch.device = "cpu", batch: int = 1, threads: int | None = 1,
                    rounds: int = 5, per_round: int = 10, warmup: int = 5) -> dict[str, float]:
    """Inference latency of one model at `batch` on its deployment paths (what a study stores).

    Returns `latency_ms` (median), `latency_ms_p10` and `latency_ms_p90` over rounds x
    per_round timed calls after `warmup` untimed ones; the caller's model is not changed.
    """
    device = torch.device(device)
    with _threads(threads if device.type == "cpu" else None):
        r = _Runner(model, shape, batch, device, False, False, train=False)
        call = r.forward_one if batch == 1 else r.forward_many
        for _ in range(warmup):
            call()
        timed = _timer(call, r._sync)
        times = [timed() for _ in range(rounds * per_round)]
    return {"latency_ms": statistics.median(times) * 1e3,
            "latency_ms_p10": _percentile(times, 10) * 1e3,
            "latency_ms_p90": _percentile(times, 90) * 1e3}


def twin_record(found: dict[str, Latency], names: dict[str, str], madds: dict[str, int]
                ) -> dict[str, Any]:
    """The `latency --json` object: the model's figures, its static twin's and their ratios."""
    head = found["model"]
    record: dict[str, Any] = {"name": names["model"], "madds": madds["model"], **head.to_dict()}
    twin = found.get("static twin")
    if twin is not None:
        record["static_twin"] = {"name": names["static twin"], "madds": madds["static twin"],
                                 **twin.to_dict()}
        record["ratios"] = {
            "madds": round(madds["model"] / madds["static twin"], 4),
            "latency": round(head.latency_ms / twin.latency_ms, 4),
            "images_per_s": round(head.images_per_s / twin.images_per_s, 4),
            "train_images_per_s": (round(head.train_images_per_s / twin.train_images_per_s, 4)
                                   if head.train_images_per_s and twin.train_images_per_s
                                   else None)}
    return record


def table_lines(found: dict[str, Latency], record: dict[str, Any], madds: dict[str, int],
                batch: int, fmt_count: Callable[[int], str]) -> list[str]:
    """The `latency` command's table: conditions, one row per model, ratios, paths taken."""
    head = found["model"]
    threads = (f", {head.threads} thread{'s' if head.threads != 1 else ''}" if head.threads
               else "")
    lines = [f"{head.device}{threads}, torch {head.torch}, {head.precision}"
             + (", channels_last" if head.channels_last else ""),
             f"{'':<14} {'MAdds':>8} {'latency b1 ms (p10-p90)':>26} "
             f"{f'images/s b{batch} (p10-p90)':>28} {'train images/s':>15}"]
    for name, m in found.items():
        train = f"{m.train_images_per_s:15.0f}" if m.train_images_per_s else f"{'-':>15}"
        lines.append(f"{name:<14} {fmt_count(madds[name]):>8} "
                     f"{f'{m.latency_ms:.3f} ({m.latency_ms_p10:.3f}-{m.latency_ms_p90:.3f})':>26} "
                     f"{f'{m.images_per_s:.0f} ({m.images_per_s_p10:.0f}-{m.images_per_s_p90:.0f})':>28} "
                     f"{train}")
    if "ratios" in record:
        r = record["ratios"]
        train = f"{r['train_images_per_s']:15.2f}" if r["train_images_per_s"] else f"{'-':>15}"
        lines.append(f"{'model / twin':<14} {r['madds']:>8.2f} {r['latency']:>26.2f} "
                     f"{r['images_per_s']:>28.2f} {train}")
    lines += [f"CondConv paths, {mode}: " + ", ".join(f"{p} {n}" for p, n in sorted(c.items()))
              for mode, c in head.paths.items()]
    return lines


def measure(model: nn.Module, shape: tuple[int, int, int], **kwargs: Any) -> Latency:
    """One model's Latency (see measure_many for the protocol and options)."""
    return measure_many({"model": model}, shape, **kwargs)["model"]


def time_torchscript(files: dict[str, str], shape: tuple[int, int, int], threads: int | None = 1,
                     rounds: int = 5, per_round: int = 10, warmup: int = 5) -> dict[str, float]:
    """Median batch-1 CPU latency (ms) of TorchScript files, interleaved; name -> ms."""
    with _threads(threads), torch.no_grad():
        graphs = {k: torch.jit.load(f, map_location="cpu").eval() for k, f in files.items()}
        x = torch.randn(1, *shape)
        for g in graphs.values():
            for _ in range(warmup):
                g(x)
        times = _interleaved({k: (_timer(lambda g=g: g(x)), per_round) for k, g in graphs.items()},
                             rounds)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}
