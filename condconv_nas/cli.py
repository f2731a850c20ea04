"""The `condconv-nas` command line: parse, dispatch, and turn known failures into one-line errors."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .cost import CONVENTION
from .spec import ArchSpec, SpecError

__all__ = ["main"]

PROG = "condconv-nas"


class UsageError(Exception):
    """Bad input that the user can fix; printed as one line with exit code 2."""


def _known_errors() -> tuple[type[Exception], ...]:
    """Error types that are the user's to fix: one line, exit code 2."""
    from .data import DataError
    from .export import ExportError
    from .report import ReportError
    from .space import SpaceError
    from .study import StorageError
    from .train import NonFiniteLossError, RecipeError

    return (SpecError, UsageError, DataError, RecipeError, NonFiniteLossError, SpaceError,
            StorageError, ReportError, ExportError)


def _spec_from_args(args: argparse.Namespace) -> ArchSpec:
    from .presets import get_preset

    spec = get_preset(args.preset) if args.preset else ArchSpec.load(args.arch)
    changes = {}
    if getattr(args, "resolution", None) is not None:
        changes["input_size"] = args.resolution
    if getattr(args, "num_classes", None) is not None:
        changes["num_classes"] = args.num_classes
    try:
        return spec.replace(**changes)
    except SpecError as err:
        message = str(err)
        for field, flag in (("input_size", "--resolution"), ("num_classes", "--num-classes")):
            if message.startswith(field + ":"):
                message = flag + message[len(field):]
        raise UsageError(message) from None


def _fmt_count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def cmd_presets(args: argparse.Namespace) -> int:
    """List every preset with its MAdds and params."""
    from .cost import count_cost
    from .presets import get_preset, preset_names

    rows = []
    for name in preset_names():
        spec = get_preset(name)
        cost = count_cost(spec)
        condconv = sum(1 for b in spec.blocks() if b.condconv)
        rows.append({"name": name, "input_size": spec.input_size, "in_channels": spec.in_channels,
                     "num_classes": spec.num_classes, "madds": cost.madds, "params": cost.params,
                     "condconv_blocks": condconv})
    if args.json:
        print(json.dumps({"presets": rows}))
        return 0
    print(f"{'preset':<38} {'input':>9} {'classes':>7} {'MAdds':>9} {'params':>9} {'CondConv':>8}")
    for r in rows:
        size = f"{r['in_channels']}x{r['input_size']}x{r['input_size']}"
        print(f"{r['name']:<38} {size:>9} {r['num_classes']:>7} {_fmt_count(r['madds']):>9} "
              f"{_fmt_count(r['params']):>9} {r['condconv_blocks']:>8}")
    print("MAdds per image at inference, CondConv routing and kernel mixing included "
          "(condconv-nas cost --help).")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """MAdds and params of a preset or arch file."""
    from .cost import count_cost

    spec = _spec_from_args(args)
    cost = count_cost(spec)
    if args.json:
        print(json.dumps(cost.to_dict(per_layer=args.per_layer)))
        return 0
    if args.per_layer:
        print(f"{'layer':<28} {'kind':<9} {'MAdds':>14} {'params':>12}")
        for layer in cost.layers:
            print(f"{layer.name:<28} {layer.kind:<9} {layer.madds:>14,} {layer.params:>12,}")
    print(f"{spec.name} at {spec.in_channels}x{spec.input_size}x{spec.input_size}, "
          f"{spec.num_classes} classes: {cost.madds:,} MAdds ({_fmt_count(cost.madds)}), "
          f"{cost.params:,} params ({_fmt_count(cost.params)})")
    print(CONVENTION)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a preset or arch file on a dataset and report accuracy and speed."""
    import torch

    from .cost import count_cost
    from .data import load_dataset
    from .model import build_model
    from .train import Recipe, check_batch_size, fit, resolve_device

    device = resolve_device(args.device)
    spec = _spec_from_args(args)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed")
                 if getattr(args, k) is not None}
    recipe = Recipe(**overrides)
    data = load_dataset(args.dataset, args.data_dir, val_size=args.val_size,
                        train_limit=args.train_limit, device=device)
    check_batch_size(recipe, data)
    spec = _fit_spec_to_data(spec, data.in_channels, data.size, data.num_classes, args.dataset)
    cost = count_cost(spec)
    torch.manual_seed(recipe.seed)
    model = build_model(spec)
    print(f"training {spec.name} ({_fmt_count(cost.madds)} MAdds, {_fmt_count(cost.params)} "
          f"params) on {args.dataset}: {len(data.train)} train / {len(data.val)} val images, "
          f"{recipe.epochs} epochs, batch {recipe.batch_size}, {device}", file=sys.stderr)
    result = fit(model, data, recipe, eval_test=args.eval_test, progress=not args.no_progress)
    figures = {"val_acc": result.val_acc, "test_acc": result.test_acc,
               "seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_s, 1),
               "madds": cost.madds, "params": cost.params, "epochs": result.epochs_run,
               "peak_memory_bytes": result.peak_memory_bytes, "device": result.device}
    if args.json:
        print(json.dumps(figures))
    else:
        test = f", test {result.test_acc:.4f}" if result.test_acc is not None else ""
        print(f"val {result.val_acc:.4f}{test} | {result.seconds:.1f} s, "
              f"{result.images_per_s:.0f} img/s | {cost.madds:,} MAdds, {cost.params:,} params "
              f"| {result.device}")
    return 0


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")


def cmd_search(args: argparse.Namespace) -> int:
    """Run (or resume) a search study, or with --control its random-sampler sibling X.random."""
    from .study import control_study_config, load_study_config, run_search, with_overrides

    if args.sampler and args.sampler not in ("tpe", "nsga2", "random"):
        raise UsageError(f"--sampler: must be tpe, nsga2 or random, got {args.sampler!r}")
    if args.control and args.sampler:
        raise UsageError("--control always uses the random sampler; drop --sampler")
    _positive(args, "trials", "workers")
    cfg = with_overrides(load_study_config(args.study), trials=args.trials, workers=args.workers,
                         storage=args.storage, sampler=args.sampler)
    if args.control:
        cfg = control_study_config(cfg)
    return _run_interruptible(lambda: run_search(cfg, print_fn=lambda s: print(s, flush=True)))


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a running study (search, or its baselines) from this machine."""
    from .study import join_study, load_study_config, with_overrides

    _positive(args, "trials", "workers")
    cfg = with_overrides(load_study_config(args.study), trials=args.trials, workers=args.workers,
                         storage=args.storage)
    return _run_interruptible(lambda: join_study(cfg, print_fn=lambda s: print(s, flush=True),
                                                 baseline=args.baselines))


def cmd_baselines(args: argparse.Namespace) -> int:
    """Train the width, depth, compound and experts baselines into the sibling study X.baseline."""
    import dataclasses

    from .baselines import FAMILIES
    from .study import load_study_config, run_baselines, with_overrides

    _positive(args, "points", "seeds", "workers")
    cfg = with_overrides(load_study_config(args.study), workers=args.workers, storage=args.storage)
    changes = {"points": args.points, "seeds": args.seeds}
    if args.families:
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
        bad = [f for f in families if f not in FAMILIES]
        if bad or not families:
            raise UsageError(f"--families: {bad[0] if bad else 'empty'!r} is not a family; "
                             f"choose from {', '.join(FAMILIES)}")
        changes["families"] = tuple(dict.fromkeys(families))
    settings = dataclasses.replace(cfg.baselines,
                                   **{k: v for k, v in changes.items() if v is not None})
    cfg = dataclasses.replace(cfg, baselines=settings)
    return _run_interruptible(lambda: run_baselines(cfg, print_fn=lambda s: print(s, flush=True)))


def _run_interruptible(run) -> int:
    """Run a study; Ctrl-C or SIGTERM stops it with exit 130, stored trials kept."""
    signal.signal(signal.SIGTERM, _raise_interrupt)  # schedulers stop jobs with SIGTERM
    try:
        run()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished trials are stored, the running one is queued "
              "again; run the same command to resume", file=sys.stderr)
        return 130
    return 0


def _results(args: argparse.Namespace):
    """The study config (with --storage applied) and its results from storage."""
    from .results import load_results
    from .study import load_study_config, open_storage, with_overrides

    cfg = with_overrides(load_study_config(args.study), storage=args.storage)
    try:
        return cfg, load_results(open_storage(cfg.storage, create=False), cfg.name, cfg.storage)
    except LookupError as err:
        raise UsageError(str(err).strip("'\"")) from None


def cmd_export(args: argparse.Namespace) -> int:
    """Export a study's architecture: arch.json, weights, TorchScript, ONNX, model card."""
    from .export import export_trial, parse_pick, pick_trial

    if args.retrain is not None and args.retrain < 1:
        raise UsageError(f"--retrain: must be >= 1 epochs, got {args.retrain}")
    pick = parse_pick(args.pick)
    cfg, results = _results(args)
    row = pick_trial(results, pick)
    out = Path(args.output) if args.output else Path("exports") / f"{cfg.name}-trial{int(row.number)}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder")
    print(f"exporting trial {int(row.number)} of {cfg.name} ({args.pick}): val acc "
          f"{row.val_acc:.4f}, {int(row.madds):,} MAdds -> {out}", file=sys.stderr)
    model = retrained = None
    if args.retrain:
        from .longrun import retrain
        from .spec import ArchSpec

        spec = ArchSpec.from_dict(json.loads(row.spec))
        model, result, data = retrain(cfg, spec, args.retrain, args.device, eval_test=True,
                                      progress=not args.no_progress)
        retrained = {"epochs": args.retrain, "val_acc": result.val_acc,
                     "test_acc": result.test_acc, "seconds": round(result.seconds, 1),
                     "train_images": len(data.train), "device": result.device}
        print(f"retrained {args.retrain} epochs on {len(data.train)} images: val "
              f"{result.val_acc:.4f}, test {result.test_acc:.4f}", file=sys.stderr)
    paths = export_trial(results, row, out, artifacts=cfg.artifacts, pick=pick, onnx=args.onnx,
                         retrained=retrained, model=model)
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        if "weights" not in paths:
            print("note: no weights were stored for this trial (front trials keep theirs); "
                  "use --retrain N for trained weights", file=sys.stderr)
        for k, v in paths.items():
            print(f"{k:>14}: {v}")
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    """Retrain front and baseline points longer; Kendall tau of proxy against long-run ranks."""
    from .longrun import run_fidelity
    from .study import load_study_config, with_overrides

    _positive(args, "top", "epochs")
    cfg = with_overrides(load_study_config(args.study), storage=args.storage)
    try:
        record = run_fidelity(cfg, args.top, args.epochs, args.device,
                              print_fn=lambda s: print(s, flush=True))
    except LookupError as err:
        raise UsageError(str(err).strip("'\"")) from None
    if args.json:
        print(json.dumps(record))
    else:
        print(f"Kendall tau {record['tau']:.3f} (p = {record['p_value']:.3g}, n = {record['n']}): "
              f"{record['verdict']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the Pareto report of a study (search, control, baselines) as HTML plus CSV."""
    from .report import write_report

    cfg, results = _results(args)
    out = Path(args.output) if args.output else Path("reports") / f"{cfg.name}.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {out}: the report is an HTML file; give a name ending in .html")
    paths = write_report(results, out)
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        done = results.finished
        counts = ", ".join(f"{f} {n}" for f, n in done.family.value_counts().items())
        print(f"report: {paths['html']} ({counts} finished trials)")
        print(f"csv: {paths['trials_csv']}, {paths['fronts_csv']}")
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_studies(args: argparse.Namespace) -> int:
    """List the studies in a storage with their trial counts by state."""
    from .study import list_studies

    url = args.storage
    if url is None:
        journals = sorted(Path("studies").glob("*.journal"))
        if not journals:
            raise UsageError("no --storage given and no studies/*.journal here")
        rows = [dict(r, storage=str(j)) for j in journals for r in list_studies(str(j))]
    else:
        rows = [dict(r, storage=url) for r in list_studies(url)]
    if args.json:
        print(json.dumps({"studies": rows}))
        return 0
    states = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    print(f"{'study':<32} {'trials':>6} " + " ".join(f"{s.lower():>8}" for s in states)
          + "  storage")
    for r in rows:
        print(f"{r['name']:<32} {r['trials']:>6} " + " ".join(f"{r.get(s, 0):>8}" for s in states)
              + f"  {r['storage']}")
    return 0


def _fit_spec_to_data(spec: ArchSpec, channels: int, size: int, classes: int, name: str
                      ) -> ArchSpec:
    """The spec with the dataset's input and classes, saying so when that changes it."""
    fitted = spec.for_input(channels, size, classes)
    if fitted != spec:
        print(f"note: {spec.name} set to {channels}x{size}x{size} input and {classes} classes "
              f"to match {name}", file=sys.stderr)
    return fitted


def _add_arch_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help="a preset name (see `condconv-nas presets`)")
    src.add_argument("--arch", metavar="FILE.json", help="a spec JSON or an exported arch.json")


def _study_parser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that works on a study file, with --storage to point at another storage."""
    p = sub.add_parser(name, **kwargs)
    p.add_argument("study", metavar="studies/X.yaml")
    p.add_argument("--storage", metavar="URL",
                   help="journal file path or Optuna storage URL (default: the study file's)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Search where CondConv layers pay off, with exact MAdds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("presets", help="list presets with MAdds and params")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("cost", help="MAdds and params of an architecture",
                       description=f"Count MAdds and params. {CONVENTION}")
    _add_arch_source(p)
    p.add_argument("--resolution", type=int, metavar="R", help="input size (pixels per side)")
    p.add_argument("--num-classes", type=int, metavar="N", help="classifier outputs")
    p.add_argument("--per-layer", action="store_true", help="list every layer")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("train", help="train an architecture on a dataset")
    _add_arch_source(p)
    p.add_argument("--dataset", required=True,
                   help="fashion-mnist, cifar10, cifar100, npz:DIR (train.npz/test.npz) or synthetic")
    p.add_argument("--data-dir", metavar="D", help="where the dataset files are (before "
                   "$CONDCONV_NAS_DATA and /usr/share/datasets)")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, metavar="B")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--val-size", type=int, metavar="N",
                   help="validation images carved from train (default 5000 or a tenth)")
    p.add_argument("--train-limit", type=int, metavar="N", help="train on the first N images only")
    p.add_argument("--eval-test", action="store_true", help="also report test accuracy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_train)

    p = _study_parser(sub, "search", help="run or resume a search study")
    p.add_argument("--trials", type=int, metavar="N", help="total trials of the study")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes sharing the storage")
    p.add_argument("--sampler", help="tpe (default), nsga2 or random")
    p.add_argument("--control", action="store_true",
                   help="run the random-sampler control into the sibling study X.random")
    p.set_defaults(func=cmd_search)

    p = _study_parser(sub, "worker", help="join a running study from this machine",
                       description="Join a study that `search` (or `baselines`) started in a "
                       "shared storage (e.g. postgresql://...): claim trials until its budget is "
                       "used; on databases a heartbeat lets others retry a trial whose worker dies.")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes on this machine")
    p.add_argument("--trials", type=int, metavar="N", help="total trials of the study")
    p.add_argument("--baselines", action="store_true", help="join X.baseline instead of X")
    p.set_defaults(func=cmd_worker)

    p = _study_parser(sub, "baselines", help="train width/depth/compound/experts baselines of a study",
                       description="Train the study's base network, CondConv off, scaled by "
                       "width, depth, compound (EfficientNet) and uniform expert counts over the "
                       "search's MAdds range, with the study's recipe, split and seeds, into the "
                       "sibling study X.baseline. Re-running resumes.")
    p.add_argument("--families", metavar="LIST", help="comma-separated subset of width,depth,"
                   "compound,experts (default: the study file's, else all)")
    p.add_argument("--points", type=int, metavar="N", help="grid points per scaling family "
                   "(default 5)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds per point (default 2)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes sharing the storage")
    p.set_defaults(func=cmd_baselines)

    p = _study_parser(sub, "report", help="write the Pareto report (HTML + CSV) of a study")
    p.add_argument("-o", "--output", metavar="FILE.html", help="default reports/<name>.html")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=cmd_report)

    p = _study_parser(sub, "export", help="export a study's architecture (arch.json, weights, "
                       "TorchScript, ONNX, model card)")
    p.add_argument("--pick", default="best", help="best (default), knee, budget=30M or trial=N")
    p.add_argument("-o", "--output", metavar="DIR", help="default exports/<name>-trial<N>")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (onnx extra)")
    p.add_argument("--retrain", type=int, metavar="EPOCHS",
                   help="first retrain on the full training split for EPOCHS epochs")
    p.add_argument("--device", default="auto", help="for --retrain: auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=cmd_export)

    p = _study_parser(sub, "fidelity", help="does the proxy rank architectures as longer training "
                       "does? (Kendall tau)")
    p.add_argument("--top", type=int, default=3, metavar="K",
                   help="front points and baseline points to retrain (default 3 each)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="long-run epochs (10)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("studies", help="list studies and their trials by state")
    p.add_argument("--storage", metavar="URL", help="default: every studies/*.journal")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_studies)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; bad input exits 2 with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    known = (SpecError, UsageError) if args.command in ("presets", "cost") else _known_errors()
    try:
        return int(args.func(args) or 0)
    except known as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{PROG}: error: out of memory; use a smaller --batch-size or architecture",
              file=sys.stderr)
        return 2
    except RuntimeError as err:  # CUDA out-of-memory arrives as torch.OutOfMemoryError
        if "out of memory" not in str(err).lower():
            raise
        print(f"{PROG}: error: out of GPU memory; use a smaller --batch-size or architecture",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
