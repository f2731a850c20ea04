"""CondConv path choice by measurement: time each exact path once per shape (like cudnn.benchmark).

The first time a CondConv2d meets a shape (batch, channels, kernel, map size, experts) on a
device, torch version, thread count, dtype and grad mode, every exact path that can compute it
runs five interleaved rounds, and a path other than the fitted rule's (`layers.choose_path`) is
kept only where it beats the rule's clearly (`decide`): a measurement taken while other jobs
load the machine must not settle a slower path for good. `CONDCONV_NAS_PATH_TUNING=0` (or
`set_tuning(False)`) takes the rule, which tests use. Choices persist in the user's cache folder,
and a study keeps its own file of them (`use_study_file`, begun from that cache): paths differ
in float rounding, so every worker, resumed run and rerun of a study computes what it computed.
A study adopts a machine choice that is not the rule's only after re-checking it (the rule's path
and it, timed again, `decide`): a choice tuned under load or on another day must win again
before a study keeps it, and where it no longer does the machine's cache takes the rule's
instead. A study's own stored choices are never re-checked, nor are the machine's in a process
outside any study (a second run there computes exactly what the first did).
While a graph is being compiled, captured or traced nothing is timed: a shape already measured
keeps its choice, any other takes the rule.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["cache_file", "candidates", "choices", "clear", "decide", "default_cache_file", "enabled",
           "reset",
           "set_cache_file", "set_tuning", "shape_key", "time_paths", "tuned_path", "use_study_file"]

ENV_TUNING = "CONDCONV_NAS_PATH_TUNING"
ENV_CACHE = "CONDCONV_NAS_PATH_CACHE"
ROUNDS = 5  # interleaved timed calls per path after one warm-up call
# Leaving the rule's path needs a clear win: a noisy measurement (a busy neighbour) must not
# settle a slower path for good. The candidate must be this much faster by its least and its
# median time, and faster in WIN_SHARE of the paired rounds.
MARGIN = 0.05
WIN_SHARE = 0.8

_enabled: bool | None = None  # None: read the environment at the next call
_cache_path: Path | None | bool = False  # False: read the environment
_choices: dict[str, str] = {}
_loaded: set[Path] = set()
_generation = 0  # bumped when remembered choices may no longer hold: layers' memos go stale
_mirror: Path | None = None  # the machine's cache, kept up to date while a study's file is used
_unchecked: set[str] = set()  # keys read from the machine's cache, not yet used in this process
_machine: dict[str, str] | None = None  # the machine's cache as a study process first read it


def enabled() -> bool:
    """Whether paths are chosen by timing (default) or by the fitted rule."""
    global _enabled
    if _enabled is None:  # read once: every CondConv forward asks, and os.environ costs 2 us
        _enabled = os.environ.get(ENV_TUNING, "1").strip().lower() not in ("0", "off", "false", "no")
    return _enabled


def set_tuning(on: bool | None) -> None:
    """Turn timing on or off for this process (None: read the environment's setting again)."""
    global _enabled
    _enabled = on


def default_cache_file() -> Path:
    """Where choices persist unless told otherwise: the user's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "condconv-nas" / "paths.json"


def cache_file() -> Path | None:
    """The JSON file choices persist in, or None (process memory only).

    `CONDCONV_NAS_PATH_CACHE` names the file; `off` keeps choices in memory; unset, the user's
    cache folder holds them, so that a second run on a machine takes the paths the first took
    (and computes exactly what it computed).
    """
    if _cache_path is False:
        env = os.environ.get(ENV_CACHE)
        if env is None:
            return default_cache_file()
        env = env.strip()
        return None if env.lower() in ("", "off", "none", "0") else Path(env).expanduser()
    return _cache_path  # type: ignore[return-value]


def set_cache_file(path: str | Path | None) -> None:
    """Persist choices in `path` (None: memory only); read on first use."""
    global _cache_path, _generation
    _cache_path = Path(path).expanduser() if path is not None else None
    _generation += 1


def clear() -> None:
    """Forget every choice made in this process (the file, if any, is left as it is)."""
    global _generation, _machine
    _choices.clear()
    _loaded.clear()
    _unchecked.clear()
    _machine = None
    _generation += 1


def reset() -> None:
    """Back to the environment's settings, with nothing remembered."""
    global _enabled, _cache_path, _mirror, _study
    _enabled, _cache_path, _mirror, _study = None, False, None, None
    clear()


def choices() -> dict[str, str]:
    """Shape key -> chosen path, for every shape seen (or read) in this process."""
    return dict(_choices)


@functools.cache
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def shape_key(layer: nn.Module, x: torch.Tensor) -> str:
    """What a path's speed depends on: device, threads, dtype, grad, layout and the conv's shape."""
    dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    layout = "cl" if (x.dim() == 4 and not x.is_contiguous()
                      and x.is_contiguous(memory_format=torch.channels_last)) else "nchw"
    mode = "train" if torch.is_grad_enabled() else "eval"
    b, c, h, w = x.shape
    return (f"{_device_name(x.device)}|torch {torch.__version__}|{torch.get_num_threads()}t|"
            f"{str(dtype).removeprefix('torch.')}"
            f"|{mode}|{layout}|b{b} {c}->{layer.out_channels} k{layer.kernel_size} "
            f"s{layer.stride} d{layer.dilation} p{layer.padding} g{layer.groups} {h}x{w} "
            f"e{layer.num_experts} bias{int(layer.bias is not None)}")


def candidates(layer: nn.Module) -> list[str]:
    """The exact paths that can compute this layer (static only serves one expert)."""
    if layer.num_experts == 1:
        return ["static"]
    paths = ["grouped", "experts"]
    if layer.kernel_size == 1 and layer.groups == 1 and layer.padding == 0:
        paths.insert(0, "bmm")
    return paths


def _busy() -> bool:
    """A graph being compiled, captured or traced: timing now would be wrong or break it."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def time_paths(layer: nn.Module, x: torch.Tensor, r: torch.Tensor, paths: list[str],
               rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Seconds of one call per path and round (forward, plus backward when grad is on); the
    paths take turns within each round, so a round's times share the machine's state.

    The layer's parameters are used but never accumulate gradients: backward goes through
    `torch.autograd.grad` on detached copies of the inputs.
    """
    grad = torch.is_grad_enabled()
    xs = x.detach().requires_grad_(grad)
    rs = r.detach().requires_grad_(grad)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    saved = layer.path
    params = [p for p in (layer.weight, layer.bias) if p is not None and p.requires_grad]

    def call(path: str) -> None:
        layer.path = path
        y = layer(xs, rs)
        if grad:
            torch.autograd.grad(y, [xs, rs, *params], torch.ones_like(y))

    times: dict[str, list[float]] = {p: [] for p in paths}
    try:
        for p in paths:  # warm-up: allocator, oneDNN/cuDNN algorithm choice
            call(p)
        for i in range(rounds):
            # Alternate the order, so no path always runs right after the same one.
            for p in (paths if i % 2 == 0 else paths[::-1]):
                sync()
                start = time.perf_counter()
                call(p)
                sync()
                times[p].append(time.perf_counter() - start)
    finally:
        layer.path = saved
    return times


def decide(times: dict[str, list[float]], rule: str) -> str:
    """The path to keep: the fastest only where it clearly beats the rule's, else the rule's."""
    best = min(times, key=lambda p: min(times[p]))
    if best == rule or rule not in times:
        return best
    fast, slow = times[best], times[rule]
    wins = sum(a < b for a, b in zip(fast, slow))
    clear = (min(fast) <= (1 - MARGIN) * min(slow)
             and statistics.median(fast) <= (1 - MARGIN) * statistics.median(slow)
             and wins >= WIN_SHARE * min(len(fast), len(slow)))
    return best if clear else rule


def _load(path: Path) -> None:
    if path in _loaded:
        return
    _loaded.add(path)
    for k, v in _read(path).items():  # no file yet, or one cut short: timing again costs little
        _choices.setdefault(k, v)


def _read(path: Path) -> dict[str, str]:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(stored, dict) else {}


def _save(path: Path, key: str, choice: str) -> str:
    """Merge one choice into the file atomically; the first choice stored for a key wins.

    Returns the choice to use: another worker that timed the same shape first decided it, so
    that every worker of a study computes a shape alike (paths differ in float rounding).
    """
    return _merge(path, {key: choice}).get(key, choice)


def _merge(path: Path, choices: dict[str, str], replace: bool = False) -> dict[str, str]:
    """Merge choices into the file under its lock (stored keys win, or with `replace` the
    given ones); what the file now holds."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = _read(path)
            if all(k in stored and (not replace or stored[k] == v) for k, v in choices.items()):
                return stored
            stored = {**stored, **choices} if replace else {**choices, **stored}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(stored, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
            return stored
    except OSError:
        return choices  # a read-only or full disk costs a re-measurement next time, never the run


def use_study_file(path: str | Path) -> None:
    """Keep this process's choices in a study's own file, drawing on the machine's cache.

    A study's accuracies then do not depend on which worker or machine timed a shape first,
    nor on later tuning elsewhere: every worker, resumed run and rerun reads what it stored. A
    shape the study has not met yet takes the machine's choice when that is the rule's, or when
    it wins a re-check against the rule's; the first choice stored in the study's file wins.
    """
    global _mirror, _study
    study_file = Path(path).expanduser()
    machine = cache_file()
    _mirror = machine if machine != study_file else None
    clear()  # choices read from another file must not stand in for the study's
    set_cache_file(study_file)
    _study = study_file


_study: Path | None = None  # the study file in use, if any


def _study_file() -> Path | None:
    return _study if _study is not None and _study == cache_file() else None


def tuned_path(layer: nn.Module, x: torch.Tensor, r: torch.Tensor | None, rule: str) -> str:
    """The measured fastest path for this shape; `rule` when tuning is off or cannot run now."""
    if rule == "static" or not enabled():
        return rule
    # The full key costs microseconds of string building on every forward; each layer remembers
    # its answers under a cheap tuple of the same facts (stride stands for the memory layout).
    dev = x.device.type
    amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    fast = (x.shape, x.stride(), x.dtype, x.device, amp, torch.is_grad_enabled(),
            torch.get_num_threads())
    generation, memo = layer.__dict__.get("_tuned_paths", (None, None))
    if generation != _generation or memo is None:  # choices were forgotten: start afresh
        memo = {}
        layer.__dict__["_tuned_paths"] = (_generation, memo)
    if fast in memo:
        return memo[fast]
    choice = _choose(layer, x, r, rule)
    if choice is not None:
        memo[fast] = choice
    return rule if choice is None else choice


def _choose(layer: nn.Module, x: torch.Tensor, r: torch.Tensor | None, rule: str) -> str | None:
    """The remembered or newly timed choice; None when it cannot be timed now (rule for now)."""
    global _machine
    key = shape_key(layer, x)
    file = cache_file()
    if file is not None:
        _load(file)
        if key not in _choices and _mirror is not None:  # a study's new shape: the machine's?
            if _machine is None:  # read once a process, not once a shape
                _machine = _read(_mirror)
            inherited = _machine.get(key)
            if inherited is not None:
                _choices[key] = inherited
                _unchecked.add(key)
    if key in _choices and key not in _unchecked:
        return _choices[key]
    paths = candidates(layer)
    if len(paths) == 1:
        return paths[0]
    if r is None or _busy():  # nothing can be timed now: a study's unchecked shape takes the rule
        return None if key in _unchecked and _study_file() is not None else _choices.get(key)
    if key in _unchecked:  # the machine's choice: kept where it beats the rule's again
        _unchecked.discard(key)
        cached = _choices[key]
        if cached == rule or cached not in paths or rule not in paths:
            choice = cached if cached in paths else rule
        else:
            choice = decide(time_paths(layer, x, r, [rule, cached]), rule)
            if choice != cached and _mirror is not None:
                _merge(_mirror, {key: choice}, replace=True)  # it no longer wins: the rule
    else:
        choice = decide(time_paths(layer, x, r, paths), rule)
        if _mirror is not None:  # later studies on this machine begin from it
            _save(_mirror, key, choice)
    study = _study_file()
    if study is not None:
        choice = _save(study, key, choice)  # another worker's stored choice wins
    elif file is not None:
        choice = _save(file, key, choice)
    _choices[key] = choice
    return choice
