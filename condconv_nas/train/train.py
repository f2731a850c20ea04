"""fit(model, data, recipe): the proxy training loop, readable top to bottom."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset, Split, augment, normalize
from .interrupts import check_interrupt
from .recipe import SCHEDULES, Recipe, RecipeError  # noqa: F401  (re-exported: train.Recipe)

__all__ = ["FitResult", "NonFiniteLossError", "Recipe", "RecipeError", "check_batch_size",
           "correct_mask", "evaluate",
           "few_steps_note", "fit", "keep_freed_memory", "resolve_device"]

# A context each training and evaluation step runs in (isolation.Isolation.step in studies).
Guard = Callable[[], contextlib.AbstractContextManager[None]]


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; carries where."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"non-finite loss at epoch {epoch}, step {step}: lower the learning rate "
                         f"(--lr) or check the data")
        self.epoch, self.step = epoch, step


@dataclass
class FitResult:
    """What one training run measured."""

    val_acc: float
    test_acc: float | None
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time over the same span (all its threads)
    images_per_s: float = 0.0
    peak_memory_bytes: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    device: str = "cpu"
    compile_mode: str | None = None   # the torch.compile mode trained with (None: eager)
    compile_seconds: float | None = None  # the first step's time beyond a steady step's
    compile_note: str = ""            # why a compiled step fell back to eager
    resumed_epochs: int = 0           # epochs restored from a checkpoint instead of trained here

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda when available else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise RecipeError(f"--device: must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _cpu_threads() -> int:
    """Threads from the environment (OMP_NUM_THREADS), else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks instead of unmapping them; True when set (once a process).

    Activations of a batch are tens of MB: glibc serves them with mmap and gives them back on
    free, so every step page-faults them in again. On this project's CPU that was up to half of a
    proxy run's time (1 epoch of 2,000 images at batch 64 plus a 5,000-image evaluation, one
    thread: 27.5 s, 10 s of it in the kernel; with freed memory kept: 14.4 s). The price is a
    resident size that stays at its peak, which a training process reaches anyway.
    """
    global _MALLOC_TUNED
    if (_MALLOC_TUNED or not sys.platform.startswith("linux")
            or os.environ.get("CONDCONV_NAS_MALLOC") == "system"):  # bench/cpu_memory.py's A/B
        return _MALLOC_TUNED
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        trim, mmap = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
        _MALLOC_TUNED = bool(libc.mallopt(mmap, ctypes.c_int(2**30))
                             and libc.mallopt(trim, ctypes.c_int(2**30)))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        pass
    return _MALLOC_TUNED


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only; BN parameters and biases (1-D) skip it."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step LR multiplier: linear warm-up, then cosine or linear decay to zero."""
    total = recipe.epochs * steps_per_epoch
    # At most half the run warms up: a 1-epoch proxy (a multi-fidelity bottom rung, a
    # calibration budget) with the default 1-epoch warm-up would end at its peak rate, untrained.
    warmup = min(int(recipe.warmup_epochs * steps_per_epoch), total // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if recipe.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return factor


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def correct_mask(model: nn.Module, split: Split, data: Dataset, batch_size: int = 1024,
                 bf16: bool = False, channels_last: bool = False,
                 guard: Guard = contextlib.nullcontext) -> torch.Tensor:
    """Which images of a split the model classifies right: bool [N] on the CPU (no augmentation)."""
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        x = normalize(split.images[start : start + batch_size], data)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with guard(), _autocast(split.images.device, bf16):
            out.append(model(x).argmax(1) == split.labels[start : start + batch_size])
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.bool)


def evaluate(model: nn.Module, split: Split, data: Dataset, batch_size: int = 1024,
             bf16: bool = False, channels_last: bool = False,
             guard: Guard = contextlib.nullcontext) -> float:
    """Top-1 accuracy on a split (no augmentation); each batch runs inside `guard()`."""
    right = correct_mask(model, split, data, batch_size, bf16, channels_last, guard)
    return int(right.sum()) / max(1, len(split))


def fit(model: nn.Module, data: Dataset, recipe: Recipe,
        on_epoch: Callable[[int, float], str | None] | None = None,
        eval_test: bool = False, progress: bool = False,
        guard: Guard = contextlib.nullcontext, checkpoint: Path | None = None) -> FitResult:
    """Train `model` on `data` (already on its device) with `recipe`.

    Args:
        model: the network; moved to the data's device.
        data: dataset from `load_dataset`, its tensors on the training device.
        recipe: optimiser, schedule, epochs, batch size, seed, GPU options.
        on_epoch: called as on_epoch(epoch, val_acc) after each epoch; returning "stop" ends
            training there (the search's pruner uses it).
        eval_test: also measure test accuracy at the end.
        progress: show a progress bar per epoch on stderr.
        guard: a context every training and evaluation step runs in (a study's measurements
            pause other workers' steps through it, see isolation.py).
        checkpoint: a file for the state after each epoch; when it holds a state of this run
            (same epochs and steps), training goes on after its last epoch (checkpoint.py).
    """
    device = data.train.images.device
    cuda = device.type == "cuda"
    bf16 = cuda if recipe.bf16 is None else recipe.bf16
    channels_last = recipe.channels_last
    recipe = dataclasses.replace(recipe, batch_size=recipe.batch_for(len(data.train)))
    check_batch_size(recipe, data)
    n = len(data.train)
    if not cuda:
        torch.set_num_threads(_cpu_threads())
        keep_freed_memory()
    torch.manual_seed(recipe.seed)  # dropout and routing dropout
    gen = torch.Generator(device=device).manual_seed(recipe.seed)

    model.to(device)
    if channels_last:
        _to_channels_last(model)
    mode = recipe.compile_mode(device.type)
    step_model = torch.compile(model, mode=None if mode == "default" else mode) if mode else model
    opt = torch.optim.SGD(_param_groups(model, recipe.weight_decay), lr=recipe.lr,
                          momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0)
    steps_per_epoch = n // recipe.batch_size  # drop the ragged last batch: fixed shapes
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(recipe, steps_per_epoch))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    # Checking the loss forces a device sync: every step on CPU (free), every 25 steps on GPU.
    check_every = 25 if cuda else 1

    result = FitResult(val_acc=0.0, test_acc=None, device=str(device), compile_mode=mode)
    train_seconds: list[float] = []
    start, before, cpu_before = _resume(load_checkpoint(checkpoint), model, opt, sched, gen,
                                        recipe.epochs, steps_per_epoch, result, train_seconds)
    started, cpu_started = time.perf_counter(), time.process_time()
    first_step = 0.0  # seconds of the first step: compilation (and graph capture) happen there

    def train_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with guard():
            with _autocast(device, bf16):
                logits = step_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return logits, loss
    for epoch in range(start, recipe.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        bad_step = torch.full((), -1, dtype=torch.long, device=device)
        bar = _bar(progress, steps_per_epoch, f"epoch {epoch}/{recipe.epochs}")
        for step in range(steps_per_epoch):
            check_interrupt()  # a Ctrl-C swallowed by a finalizer still stops the run
            idx = perm[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            x = normalize(augment(data.train.images[idx], data, gen), data)
            y = data.train.labels[idx]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if epoch == start and step == 0:
                t_first = time.perf_counter()
                try:
                    logits, loss = train_step(x, y)
                except Exception as err:  # a compiler failure must not lose the trial
                    if step_model is model or isinstance(err, (torch.OutOfMemoryError,
                                                               KeyboardInterrupt)):
                        raise
                    step_model = model
                    result.compile_note = (f"torch.compile ({mode}) failed, trained eagerly: "
                                           f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                                           if str(err) else f"{type(err).__name__}")
                    print(f"note: {result.compile_note}", file=sys.stderr)
                    result.compile_mode = None
                    logits, loss = train_step(x, y)
                if cuda:
                    torch.cuda.synchronize(device)
                first_step = time.perf_counter() - t_first
            else:
                logits, loss = train_step(x, y)
            loss = loss.detach()
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
            loss_sum += loss
            correct += (logits.detach().argmax(1) == y).sum()
            if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                if bad_step.item() >= 0:
                    _close(bar)
                    raise NonFiniteLossError(epoch, int(bad_step.item()) + 1)
                if bar is not None:
                    seen = (step + 1) * recipe.batch_size
                    bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}",
                                    acc=f"{correct.item() / seen:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
            if bar is not None:
                bar.update(1)
        if cuda:
            torch.cuda.synchronize(device)
        train_seconds.append(time.perf_counter() - t0)
        val_acc = evaluate(model, data.val, data, recipe.eval_batch_size, bf16, channels_last,
                           guard)
        seen = steps_per_epoch * recipe.batch_size
        result.curve.append({"epoch": epoch, "loss": loss_sum.item() / steps_per_epoch,
                             "train_acc": correct.item() / seen, "val_acc": val_acc,
                             "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.set_postfix(loss=f"{result.curve[-1]['loss']:.3f}", val_acc=f"{val_acc:.4f}",
                            img_s=f"{seen / train_seconds[-1]:.0f}", refresh=False)
            _close(bar)
        result.val_acc, result.epochs_run = val_acc, epoch
        if on_epoch is not None and on_epoch(epoch, val_acc) == "stop":
            result.stopped_early = epoch < recipe.epochs
            break
        if checkpoint is not None and epoch < recipe.epochs:
            save_checkpoint(checkpoint, {
                "epochs": recipe.epochs, "steps_per_epoch": steps_per_epoch, "epoch": epoch,
                "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "gen": gen.get_state(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
                "curve": result.curve, "train_seconds": train_seconds,
                "seconds": before + time.perf_counter() - started,
                "cpu_seconds": cpu_before + time.process_time() - cpu_started})

    if eval_test and len(data.test):
        result.test_acc = evaluate(model, data.test, data, recipe.eval_batch_size, bf16,
                                   channels_last, guard)
    result.seconds = before + time.perf_counter() - started
    result.cpu_seconds = cpu_before + time.process_time() - cpu_started
    # Steady-state throughput: an attempt's first epoch carries warm-up (and compilation) when
    # there are others.
    k = start - 1  # this attempt's first epoch; 0 unless resumed
    others = [t for i, t in enumerate(train_seconds) if i not in (0, k)]
    steady = others or train_seconds
    result.images_per_s = steps_per_epoch * recipe.batch_size * len(steady) / sum(steady)
    if result.compile_mode and steps_per_epoch:
        # Compilation: what the first step took beyond a steady step (the whole first step when
        # there is no other epoch to time a steady one by).
        per_step = (sum(others) / (steps_per_epoch * len(others)) if others else
                    (train_seconds[k] - first_step) / max(1, steps_per_epoch - 1))
        result.compile_seconds = max(0.0, first_step - per_step)
    result.peak_memory_bytes = (torch.cuda.max_memory_allocated(device) if cuda else
                                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return result


def _resume(state: dict | None, model: nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator, epochs: int,
            steps_per_epoch: int, result: FitResult, train_seconds: list[float]
            ) -> tuple[int, float, float]:
    """Restore a checkpoint of this run; (first epoch to train, seconds and CPU seconds spent).

    A state of another schedule (other epochs or steps an epoch) is ignored: its learning rates
    are not this run's.
    """
    if not state or (state.get("epochs"), state.get("steps_per_epoch")) != (epochs, steps_per_epoch):
        return 1, 0.0, 0.0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and gen.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], gen.device)
    result.curve[:] = state["curve"]
    train_seconds[:] = state["train_seconds"]
    result.val_acc, result.epochs_run = result.curve[-1]["val_acc"], state["epoch"]
    result.resumed_epochs = state["epoch"]
    return state["epoch"] + 1, float(state["seconds"]), float(state["cpu_seconds"])


def _to_channels_last(model: nn.Module) -> None:
    """channels_last for every 4-D parameter; CondConv's 5-D expert stacks stay as they are."""
    for p in model.parameters():
        if p.ndim == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)


def check_batch_size(recipe: Recipe, data: Dataset) -> None:
    """A batch must fit in the training split (the ragged last batch is dropped)."""
    n = len(data.train)
    if recipe.batch_for(n) > n:
        raise RecipeError(f"batch size {recipe.batch_for(n)} is larger than the training split "
                          f"({n} images); use --batch-size {max(1, n // 4)} or smaller (in a "
                          "study file: recipe.batch_size)")


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=True,
                dynamic_ncols=True)


def _close(bar) -> None:
    if bar is not None:
        bar.close()


def few_steps_note(recipe: Recipe, n_train: int) -> str | None:
    """A note when a batch the user set leaves fewer than MIN_STEPS optimizer steps an epoch."""
    from .recipe import MIN_STEPS

    steps = n_train // recipe.batch_for(n_train)
    if recipe.batch_size is None or steps >= MIN_STEPS:
        return None
    better = Recipe(epochs=1).batch_for(n_train)
    return (f"note: batch {recipe.batch_size} leaves {steps} optimizer steps an epoch on "
            f"{n_train} images, too few to learn well; --batch-size {better} gives "
            f"{n_train // better}")
