"""Pick an architecture from a study, write it out (arch.json, weights, TorchScript, ONNX, card),
and load it back.

An export folder holds:
- `arch.json`: `{"format": "condconv-nas/arch", "version": 1, "spec", "metrics", "provenance",
  "preprocess", "weights"}`;
- `weights.pt`: a state dict (the trial's proxy weights, or the retrained ones);
- `model.ts`: TorchScript (traced, batch size free);
- `model.onnx`: with `onnx=True` (needs the `onnx` extra);
- `MODEL_CARD.md`: what it is, how it scored, how to load it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._version import __version__
from .analysis.pareto import front
from .analysis.results import StudyResults
from .errors import UserError
from .nn.cost import CONVENTION, count_cost
from .nn.spec import ARCH_FORMAT, ARCH_VERSION, ArchSpec, SpecError, check_arch_header
from .search.space import parse_count
from .store.record import SEARCH, copy_source
from .textfile import read_text

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .search.config import StudyConfig

__all__ = ["ExportError", "Pick", "check_weights", "confirmed_summary", "export_problem", "export_trial",
           "knee_index", "load_arch", "parse_pick", "pick_trial", "read_arch", "retrain_trial"]


class ExportError(UserError):
    """An export that cannot be made or read; the message says why and what to do."""


@dataclass(frozen=True)
class Pick:
    """Which trial to export: best, knee, budget=<MAdds> or trial=<number>."""

    kind: str
    value: int | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value}"


def export_problem(retrain: int | None, untrained: bool, name: Callable[[str], str]) -> str | None:
    """What is wrong with the retrain/untrained arguments, each written as `name` gives it."""
    if retrain is not None and retrain < 1:
        return f"{name('retrain')}: must be >= 1 epochs, got {retrain}"
    if retrain and untrained:
        return f"{name('untrained')} and {name('retrain')} exclude each other; drop one"
    return None


def parse_pick(text: str) -> Pick:
    """'best' | 'knee' | 'budget=30M' | 'trial=12' -> Pick; anything else is an ExportError."""
    text = text.strip()
    if text in ("best", "knee"):
        return Pick(text)
    m = re.fullmatch(r"(budget|trial)=(.+)", text)
    if m and m.group(1) == "budget":
        budget = parse_count(m.group(2))
        if budget is not None and budget > 0:
            return Pick("budget", budget)
    if m and m.group(1) == "trial" and m.group(2).isascii() and m.group(2).isdigit():
        return Pick("trial", int(m.group(2)))
    raise ExportError(f"--pick {text!r}: use best, knee, budget=<MAdds> (e.g. budget=30M) or "
                      "trial=<number>")


def knee_index(f: pd.DataFrame) -> int:
    """Row of the front (sorted by MAdds) farthest above the chord joining its two ends.

    Distances are taken on log-MAdds and accuracy each scaled to [0, 1] over the front; with
    fewer than three points (no interior) the cheapest point is returned.
    """
    if len(f) < 3:
        return 0
    x = f.madds.map(math.log).to_numpy()
    y = f.val_acc.to_numpy(float)
    x = (x - x.min()) / ((x.max() - x.min()) or 1.0)
    y = (y - y.min()) / ((y.max() - y.min()) or 1.0)
    # Above the chord from (x0, y0) to (x1, y1): the signed distance, up to a constant factor.
    dist = (x[-1] - x[0]) * (y - y[0]) - (y[-1] - y[0]) * (x - x[0])
    return int(dist.argmax())


def pick_trial(results: StudyResults, pick: Pick) -> pd.Series:
    """The search trial (a row of results.finished) that `pick` names."""
    done = results.finished
    search = done[done.family == SEARCH]
    if pick.kind == "trial":
        rows = results.trials[(results.trials.family == SEARCH)
                              & (results.trials.number == pick.value)]
        if rows.empty:
            raise ExportError(f"study {results.name} has no trial {pick.value}")
        row = rows.iloc[0]
        # A skipped duplicate (stored PRUNED) stands for its original's run: its weights too.
        if (row.state != "COMPLETE" and pd.isna(row.reused_from)) or not row.feasible:
            why = "was over the MAdds budget" if not row.feasible else f"is {row.state}"
            raise ExportError(f"trial {pick.value} of {results.name} {why}; pick a completed one")
        return row
    if search.empty:
        raise ExportError(f"study {results.name} has no completed trials to export; run "
                          "`condconv-nas search` first")
    if pick.kind == "best":
        # A single search run is the best of many and inflated by that selection: when front
        # points are confirmed, the best confirmed validation mean (fresh seeds) wins, so that
        # the holdout mean the card reports played no part in the pick.
        c = results.confirmed
        runs = c[(c.family == SEARCH) & c.confirm_of.isin(front(search).number)]
        if not runs.empty:
            means = runs.groupby("confirm_of").val_acc.mean()
            madds = search.set_index("number").madds
            best = max(means.index, key=lambda n: (means[n], -float(madds[n])))
            return search[search.number == best].iloc[0]
        return search.sort_values(["val_acc", "madds"], ascending=[False, True]).iloc[0]
    if pick.kind == "knee":
        f = front(search)
        return f.iloc[knee_index(f)]
    under = search[search.madds <= pick.value]
    if under.empty:
        raise ExportError(f"no completed trial of {results.name} has <= {pick.value:,} MAdds "
                          f"(the cheapest has {int(search.madds.min()):,}); raise the budget")
    return under.sort_values(["val_acc", "madds"], ascending=[False, True]).iloc[0]


def confirmed_summary(results: StudyResults, number: int) -> dict[str, Any] | None:
    """A search trial's confirmation: mean and sd over its fresh seeds, on the holdout split
    when its runs were scored on one (else validation); None when it was not confirmed."""
    c = results.confirmed
    runs = c[(c.family == SEARCH) & (c.confirm_of == number)]
    if runs.empty:
        return None
    held = runs.holdout_acc.dropna()
    accs, split = (held, "holdout") if len(held) else (runs.val_acc, "validation")
    return {"mean": float(accs.mean()), "std": float(accs.std(ddof=1)) if len(accs) > 1 else None,
            "seeds": int(len(accs)), "split": split}


def _weights_of(results: StudyResults, row: pd.Series) -> str:
    """The trial's weights artifact id, or that of the trial it reused ('' when none)."""
    if row.weights_artifact:
        return str(row.weights_artifact)
    t = results.trials
    same = t[(t.family == SEARCH) & (t.number == row.reused_from) & (t.weights_artifact != "")]
    return str(same.weights_artifact.iloc[0]) if len(same) else ""


def retrain_trial(cfg: StudyConfig, row: pd.Series, epochs: int, device: str = "auto",
                  progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Retrain a picked trial's network for `epochs` on the full split; the model and its record."""
    from .search.fidelity import retrain

    spec = ArchSpec.from_dict(json.loads(row.spec), f"trial {int(row.number)}: spec")
    model, result, data = retrain(cfg, spec, epochs, device, eval_test=True, progress=progress)
    return model, {"epochs": epochs, "val_acc": result.val_acc, "test_acc": result.test_acc,
                   "seconds": round(result.seconds, 1), "train_images": len(data.train),
                   "device": result.device}


def check_weights(results: StudyResults, row: pd.Series, artifacts: str) -> None:
    """Refuse a trial without stored weights (only front trials keep theirs), naming the fixes."""
    if not (_weights_of(results, row) and artifacts):
        why = (f"its result was copied from {copy_source(row.copied_from)}"
               if row.get("copied_from") else "only front trials keep theirs")
        raise ExportError(f"trial {int(row.number)} of {results.name} has no stored weights "
                          f"({why}): use --retrain EPOCHS for trained "
                          "weights, or --untrained for the architecture alone")


def export_trial(results: StudyResults, row: pd.Series, out: str | Path, artifacts: str = "",
                 pick: Pick | None = None, onnx: bool = False,
                 retrained: dict[str, Any] | None = None,
                 model: nn.Module | None = None, untrained: bool = False,
                 latency: bool = True) -> dict[str, Path]:
    """Write the export folder for one trial; `model` (retrained) replaces the proxy weights.

    With `latency`, the exported TorchScript file and the static twin's (the same network with
    CondConv off) are timed at batch 1 on this CPU, interleaved, and both go in arch.json and
    the card: the cost a deployment pays, beside the MAdds it was chosen by.

    A trial without stored weights (only front trials keep theirs) is refused unless
    `untrained` asks for the architecture with freshly initialised weights: a graph of random
    weights listed beside the proxy's accuracy would mislead.
    """
    import torch

    from .nn.model import build_model

    artifact = _weights_of(results, row)
    if model is None and not untrained:
        check_weights(results, row, artifacts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = ArchSpec.from_dict(json.loads(row.spec), f"trial {int(row.number)}: spec")
    paths: dict[str, Path] = {}
    weights = None
    if model is not None:
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                   out / "weights.pt")
        weights = {"file": "weights.pt", "source": f"retrained {retrained['epochs']} epochs"}
    if artifact and artifacts:
        from optuna.artifacts import FileSystemArtifactStore, download_artifact

        target = out / ("proxy_weights.pt" if model is not None else "weights.pt")
        target.unlink(missing_ok=True)  # download_artifact refuses to overwrite
        try:
            download_artifact(artifact_store=FileSystemArtifactStore(artifacts),
                              file_path=str(target), artifact_id=artifact)
        except Exception as err:  # a store moved or pruned: say so, keep going without
            raise ExportError(f"weights of trial {int(row.number)} (artifact {artifact}) cannot "
                              f"be read from {artifacts}: {err}") from None
        if model is None:
            weights = {"file": "weights.pt", "source": f"proxy trial {int(row.number)}"}
        else:
            paths["proxy_weights"] = target
    if model is None:
        model = build_model(spec)
        if weights:
            model.load_state_dict(torch.load(out / "weights.pt", map_location="cpu",
                                             weights_only=True))
    model = model.cpu().eval()
    cost = count_cost(spec)
    m = results.manifest
    record = {
        "format": ARCH_FORMAT, "version": ARCH_VERSION, "spec": spec.to_dict(),
        "metrics": {"val_acc": float(row.val_acc),
                    "confirmed": confirmed_summary(results, int(row.number)),
                    "search_trials": int((results.finished.family == SEARCH).sum()),
                    "madds": cost.madds, "params": cost.params,
                    "proxy_epochs": int(row.epochs_run) if pd.notna(row.epochs_run) else None,
                    "retrained": retrained},
        "provenance": {"study": results.name, "storage": results.storage,
                       "trial": int(row.number), "pick": str(pick) if pick else None,
                       "seed": m.get("seed"), "dataset": m.get("dataset"),
                       "train_limit": m.get("train_limit"), "recipe": m.get("recipe"),
                       "versions": {**(m.get("versions") or {}), "condconv_nas": __version__},
                       "madds_convention": CONVENTION,
                       "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        # The network's own input size: a searched resolution differs from the dataset's.
        "preprocess": ({**m["preprocess"], "input_size": spec.input_size}
                       if m.get("preprocess") else None),
        "weights": weights,
    }
    if weights:
        paths["weights"] = out / "weights.pt"
    example = torch.zeros(2, spec.in_channels, spec.input_size, spec.input_size)
    paths["torchscript"] = _torchscript(deploy_copy(model), example, out / "model.ts")
    if onnx:
        paths["onnx"] = _onnx(deploy_copy(model, onnx=True), example, out / "model.onnx")
    if latency:
        record["metrics"]["latency"] = measure_export(spec, paths["torchscript"], example)
    (out / "arch.json").write_text(json.dumps(record, indent=2) + "\n")
    paths["arch"] = out / "arch.json"
    paths["card"] = _card(record, out / "MODEL_CARD.md", sorted(p.name for p in paths.values()))
    return paths


def measure_export(spec: ArchSpec, file: Path, example: torch.Tensor) -> dict[str, Any]:
    """Batch-1 CPU latency of an exported TorchScript file and of its static twin's trace."""
    import tempfile

    import torch

    from .nn.latency import describe_device, time_torchscript
    from .nn.model import build_model
    from .search.baselines import static_base

    shape = tuple(example.shape[1:])
    files = {"model": str(file)}
    with tempfile.TemporaryDirectory() as tmp:
        if any(b.condconv for b in spec.blocks()):
            twin = build_model(static_base(spec)).eval()
            files["static_twin"] = str(_torchscript(twin, example, Path(tmp) / "twin.ts"))
        ms = time_torchscript(files, shape, threads=None)
    ms.setdefault("static_twin", ms["model"])  # a static network is its own twin
    return {"file": file.name, "device": describe_device(torch.device("cpu")),
            "threads": torch.get_num_threads(), "batch": 1, "torch": torch.__version__,
            "model_ms": round(ms["model"], 4), "static_twin_ms": round(ms["static_twin"], 4),
            "ratio": round(ms["model"] / ms["static_twin"], 3)}


def deploy_copy(model: nn.Module, onnx: bool = False) -> nn.Module:
    """A copy whose CondConv layers take the deployment paths (see layers.deploy_path)."""
    import copy

    from .nn.layers import set_deploy_paths

    return set_deploy_paths(copy.deepcopy(model).eval(), onnx)


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on Python ints; the paths are batch-free
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))
    return path


def _onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    import importlib.util

    import torch

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        raise ExportError("ONNX export needs the onnx extra: pip install 'condconv-nas[onnx]'")
    batch = torch.export.Dim("batch", min=1, max=4096)
    import contextlib
    import io
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # notes about torchvision ops this model does not use
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_shapes={"x": {0: batch}},
                          dynamo=True)
    quiet.setLevel(level)
    return path


def _card(record: dict[str, Any], path: Path, files: list[str]) -> Path:
    spec = ArchSpec.from_dict(record["spec"])
    met, prov, pre = record["metrics"], record["provenance"], record.get("preprocess") or {}
    blocks = spec.blocks()
    condconv = [f"{b.name} ({b.experts} experts)" for b in blocks if b.condconv]
    retrained = met.get("retrained")
    lines = [
        f"# {prov['study']} trial {prov['trial']}" + (f" ({prov['pick']})" if prov["pick"] else ""),
        "",
        f"An MBConv network of {len(blocks)} blocks for {spec.in_channels}x{spec.input_size}x"
        f"{spec.input_size} images and {spec.num_classes} classes, found by condconv-nas "
        f"{record['provenance']['versions'].get('condconv_nas', '')}.",
        "",
        "| figure | value |", "| --- | --- |",
        f"| MAdds per image | {met['madds']:,} |",
        f"| parameters | {met['params']:,} |",
        f"| proxy val accuracy, single search run | {met['val_acc']:.4f} "
        f"({met.get('proxy_epochs') or '?'} epochs, {prov.get('train_limit') or 'all'} training "
        f"images; one run, picked from {met.get('search_trials') or 'many'} search trials: "
        "selection inflates such a figure on average) |",
    ]
    conf = met.get("confirmed")
    if conf:
        sd = f" ± {conf['std']:.4f} (sd)" if conf.get("std") is not None else ""
        where = ("the holdout split, which no search trial saw and the pick did not use (`best` "
                 "picks by the confirmations' validation mean)" if conf["split"] == "holdout"
                 else "the validation split that selected it: not an unbiased estimate")
        lines += [f"| confirmed proxy accuracy, mean over {conf['seeds']} fresh seeds | "
                  f"{conf['mean']:.4f}{sd}, on {where} |"]
    else:
        lines += ["| confirmed proxy accuracy | not confirmed (`condconv-nas confirm`): the "
                  "single run above is the only figure |"]
    lat = met.get("latency")
    if lat:
        lines += [f"| CPU latency, batch 1 ({lat['file']}) | {lat['model_ms']:.2f} ms "
                  f"({lat['ratio']:.2f}x the static twin's {lat['static_twin_ms']:.2f} ms; "
                  f"{lat['device']}, {lat['threads']} threads) |"]
    if retrained:
        test = retrained.get("test_acc")
        lines += [f"| retrained val accuracy | {retrained['val_acc']:.4f} "
                  f"({retrained['epochs']} epochs) |",
                  f"| retrained test accuracy | {test:.4f} |" if test is not None else ""]
    lines += [
        "",
        f"CondConv blocks: {', '.join(condconv) if condconv else 'none (a static network)'}.",
        "",
        "## Provenance",
        f"- study `{prov['study']}`, trial {prov['trial']}, storage `{prov['storage']}`",
        f"- dataset `{prov.get('dataset')}`, split seed {prov.get('seed')}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(prov['versions'].items()))}",
        f"- MAdds convention: {prov['madds_convention']}",
        "",
        "## Use",
        f"Input: {spec.in_channels}x{spec.input_size}x{spec.input_size} images (resize others to "
        f"{spec.input_size} px first), as floats `x = (pixels / 255 - mean) / std` per channel"
        + (f" with mean {pre.get('mean')} and std {pre.get('std')}." if pre else "."),
        "",
        "```python",
        "import condconv_nas as cn",
        f"model = cn.load_arch('{path.parent.name}/arch.json')   # eval mode, weights loaded",
        "# or, without condconv-nas: torch.jit.load('model.ts')",
        "```",
        "",
        f"Files: {', '.join(files + ['MODEL_CARD.md'])}.",
        "",
    ]
    path.write_text("\n".join(line for line in lines if line is not None))
    return path


def read_arch(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The validated arch.json record and its folder; `path` is the file or its folder."""
    path = Path(path)
    file = path / "arch.json" if path.is_dir() else path
    try:
        data = json.loads(read_text(file, SpecError))
    except json.JSONDecodeError as err:
        raise SpecError(f"{file}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{file}: not an arch.json (a JSON object with format {ARCH_FORMAT})")
    check_arch_header(data, str(file))
    ArchSpec.from_dict(data.get("spec"), f"{file}: spec")
    return data, file.parent


def load_arch(path: str | Path, weights: bool = True):
    """Rebuild the exported model (eval mode); with `weights`, load its weights.pt."""
    import torch

    from .nn.model import build_model

    record, folder = read_arch(path)
    spec = ArchSpec.from_dict(record["spec"], "spec")
    model = build_model(spec)
    if weights:
        info = record.get("weights") or {}
        file = folder / info.get("file", "weights.pt")
        if not info or not file.exists():
            raise ExportError(f"{folder}: no weights stored with this export ({file.name} "
                              "missing); use load_arch(..., weights=False) or export with "
                              "--retrain N")
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return model.eval()
