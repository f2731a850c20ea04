"""What each `condconv-nas` subcommand does, given its parsed arguments (cli.py parses and dispatches)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .nn.cost import CONVENTION
from .nn.spec import ArchSpec, SpecError

if TYPE_CHECKING:
    from .search.config import StudyConfig

__all__ = ["UsageError", "cmd_baselines", "cmd_calibrate", "cmd_confirm", "cmd_cost", "cmd_dashboard",
           "cmd_export",
           "cmd_fidelity", "cmd_latency", "cmd_presets", "cmd_report", "cmd_search", "cmd_studies",
           "cmd_train", "cmd_worker"]

PROG = "condconv-nas"


class UsageError(UserError):
    """Bad input that the user can fix; printed as one line with exit code 2."""


def _spec_from_args(args: argparse.Namespace) -> ArchSpec:
    from .nn.presets import get_preset

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
    from .nn.cost import count_cost
    from .nn.presets import get_preset, preset_names

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
    from .nn.cost import count_cost

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

    from .nn.cost import count_cost
    from .nn.model import build_model
    from .train.data import load_dataset
    from .train.train import Recipe, check_batch_size, few_steps_note, fit, resolve_device

    _positive(args, "train_limit", "image_size")  # a negative N would slice off the last N images
    device = resolve_device(args.device)
    spec = _spec_from_args(args)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed")
                 if getattr(args, k) is not None}
    recipe = Recipe(**overrides)
    data = load_dataset(args.dataset, args.data_dir, val_size=args.val_size,
                        train_limit=args.train_limit, device=device, image_size=args.image_size)
    check_batch_size(recipe, data)
    note = few_steps_note(recipe, len(data.train))
    if note:
        print(note, file=sys.stderr)
    spec = _fit_spec_to_data(spec, data.in_channels, data.size, data.num_classes, args.dataset)
    cost = count_cost(spec)
    torch.manual_seed(recipe.seed)
    model = build_model(spec)
    print(f"training {spec.name} ({_fmt_count(cost.madds)} MAdds, {_fmt_count(cost.params)} "
          f"params) on {args.dataset}: {len(data.train)} train / {len(data.val)} val images, "
          f"{recipe.epochs} epochs, batch {recipe.batch_for(len(data.train))}, {device}",
          file=sys.stderr)
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


def cmd_latency(args: argparse.Namespace) -> int:
    """Measured batch-1 latency, large-batch throughput and training images/s, with the twin's."""
    import torch

    from .nn.cost import count_cost
    from .nn.latency import default_batch, measure_many, table_lines, twin_record
    from .nn.model import build_model
    from .search.baselines import static_base
    from .train.train import resolve_device

    _positive(args, "batch", "threads", "repeats")
    device = resolve_device(args.device)
    spec = _spec_from_args(args)
    specs = {"model": spec}
    if any(b.condconv for b in spec.blocks()) and not args.no_twin:
        specs["static twin"] = static_base(spec)
    madds = {k: count_cost(s).madds for k, s in specs.items()}
    torch.manual_seed(0)  # weights do not change the timing; fixed for repeatable shapes
    models = {k: build_model(s) for k, s in specs.items()}
    batch = args.batch or default_batch(spec.input_size)
    shape = (spec.in_channels, spec.input_size, spec.input_size)
    print(f"measuring {spec.name} ({_fmt_count(madds['model'])} MAdds)"
          + (" and its static twin" if len(models) > 1 else "")
          + f" on {device}: batch 1 and {batch}, {args.repeats} interleaved rounds", file=sys.stderr)
    found = measure_many(models, shape, device=device, batch=batch, threads=args.threads,
                         bf16=args.bf16, channels_last=args.channels_last, train=not args.no_train,
                         rounds=args.repeats)
    record = twin_record(found, {k: s.name for k, s in specs.items()}, madds)
    print(json.dumps(record) if args.json
          else "\n".join(table_lines(found, record, madds, batch, _fmt_count)))
    return 0


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")


def study_config(args: argparse.Namespace, **changes: Any) -> StudyConfig:
    """The study file of `args.study` with the command line's overrides: --storage, --workers,
    --workers-per-gpu where the command has them, and `changes` (None leaves a field as it is)."""
    from .search.config import load_study_config, with_overrides

    shared = {k: getattr(args, k, None) for k in ("storage", "workers", "workers_per_gpu")}
    return with_overrides(load_study_config(args.study), **shared, **changes)


def _say(line: str) -> None:
    print(line, flush=True)


def _study(args: argparse.Namespace, progress: Callable[[str], None] = _say, **changes: Any):
    """The front door (api.Study) on the command's study file and overrides."""
    from .api import Study

    return Study(study_config(args, **changes), progress=progress)


def cmd_search(args: argparse.Namespace) -> int:
    """Run (or resume) a search study, or with --control its random-sampler sibling X.random."""
    if args.control and args.sampler:
        raise UsageError("--control always uses the random sampler; drop --sampler")
    _positive(args, "trials", "workers", "workers_per_gpu")
    study = _study(args, trials=args.trials, sampler=args.sampler,
                   reproducible=False if args.no_reproducible else None)
    return _run_interruptible(lambda: study.search(control=args.control))


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a running study (search, its baselines or its confirmation) from this machine."""
    _positive(args, "trials", "workers", "workers_per_gpu")
    sibling = ("baseline" if args.baselines else "confirm" if args.confirm
               else "calibrate" if args.calibrate else None)
    study = _study(args, trials=args.trials)
    return _run_interruptible(lambda: study.join(sibling=sibling))


def cmd_confirm(args: argparse.Namespace) -> int:
    """Retrain the search's (and control's) front architectures with fresh seeds into X.confirm."""
    _positive(args, "seeds", "workers", "workers_per_gpu")
    if args.seeds is not None and args.seeds < 2:
        raise UsageError(f"--seeds: must be >= 2 (a mean needs its spread), got {args.seeds}")
    study = _study(args)
    return _run_interruptible(lambda: study.confirm(seeds=args.seeds))


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Train the calibration ladder into X.calibrate and recommend the cheapest faithful proxy."""
    from .analysis.calibration import ci_text, seed_line, study_lines, verdict_line

    _positive(args, "workers", "workers_per_gpu")
    if args.archs is not None and args.archs < 4:
        raise UsageError(f"--archs: must be >= 4 (a rank correlation needs them), got {args.archs}")
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else _say
    study = _study(args, progress=say)
    out: dict[str, Any] = {}

    def run() -> None:
        out.update(study.calibrate(args.archs))

    code = _run_interruptible(run)
    if code:
        return code
    if args.json:  # NaN (too few architectures for a tau) is not JSON: null
        print(json.dumps(_json_safe(out)))
        return 0
    ref = out["reference"]
    print(f"\nKendall tau with the reference ({ref['epochs']} epochs x "
          f"{ref['train_images'] or 'all'} images, {ref['archs']} architectures, "
          f"{ref['seconds_per_arch']:.1f} s each; accuracies {ref['acc_min']:.4f}-"
          f"{ref['acc_max']:.4f}):")
    print(f"  {'budget':<18} {'archs':>5} {'tau':>6} {'95% interval':>14} {'p (>0)':>8} "
          f"{'MAdds':>6} {'tau-MAdds 95%':>14} {'params':>6} {'s/arch':>8}  qualifies")
    for b in out["budgets"]:
        print(f"  {b['label']:<18} {b['archs']:>5} {b['tau']:>6.2f} {ci_text(b['tau_ci95']):>14} "
              f"{b['p_value']:>8.3g} {b['tau_madds']:>6.2f} {ci_text(b['tau_gain_ci95']):>14} "
              f"{b['tau_params']:>6.2f} {b['seconds_per_arch']:>8.1f}  "
              f"{'yes' if b['qualifies'] else 'no'}")
    print(seed_line(ref))
    print(verdict_line(out))
    if (rec := out["recommended"]) is not None:
        print(f"in {args.study}:")
        for line in study_lines(rec, out["train_size"]):
            print(f"  {line}")
    return 0


def _json_safe(value: Any) -> Any:
    """The value with every NaN float replaced by None."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def cmd_baselines(args: argparse.Namespace) -> int:
    """Train the width, depth, compound and experts baselines into the sibling study X.baseline."""
    from .search.baselines import families_problem

    _positive(args, "points", "seeds", "workers", "workers_per_gpu")
    families = None
    if args.families:
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
        if problem := families_problem(families):
            raise UsageError(f"--families: {problem}")
    study = _study(args)
    return _run_interruptible(lambda: study.baselines(families, args.points, args.seeds))


def _run_interruptible(run: Callable[[], Any]) -> int:
    """Run a study; Ctrl-C or SIGTERM (cli.main) stops it with exit 130, stored trials kept."""
    try:
        run()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished trials are stored, the running one is queued "
              "again; run the same command to resume", file=sys.stderr)
        return 130
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a study's architecture: arch.json, weights, TorchScript, ONNX, model card."""
    from .export import export_problem

    if problem := export_problem(args.retrain, args.untrained, lambda name: f"--{name}"):
        raise UsageError(problem)
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"-o {args.output}: exists and is not a folder")
    study = _study(args, progress=lambda line: print(line, file=sys.stderr))
    paths = study.export(args.pick, args.output, onnx=args.onnx, retrain=args.retrain,
                         device=args.device, untrained=args.untrained,
                         latency=not args.no_latency, bar=not args.no_progress)
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        for k, v in paths.items():
            print(f"{k:>14}: {v}")
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    """Retrain front and baseline points longer; Kendall tau of proxy against long-run ranks."""
    from .analysis.calibration import ci_text
    from .search.fidelity import run_fidelity

    _positive(args, "top", "epochs")
    cfg = study_config(args)
    record = run_fidelity(cfg, args.top, args.epochs, args.device,
                          print_fn=lambda s: print(s, flush=True))
    if args.json:  # NaN (a constant ranking) is not JSON: null
        print(json.dumps(_json_safe(record)))
    else:
        print(f"Kendall tau {record['tau']:.3f} (95% interval {ci_text(record['tau_ci95'])}, "
              f"one-sided p = {record['p_value']:.3g}, n = {record['n']}): {record['verdict']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the Pareto report of a study (search, control, baselines) as HTML plus CSV."""
    from .analysis.headline import headline_json, headline_lines
    from .analysis.report import output_problem

    out = Path(args.output) if args.output else None
    if out is not None and (problem := output_problem(out)):
        raise UsageError(f"-o {out}: {problem}")
    study = _study(args)
    results = study.stored()
    written = study.report(out, results)
    paths, head = written.paths, written.headline
    if args.json:
        print(json.dumps({**{k: str(v) for k, v in paths.items()},
                          **headline_json(results, head)}))
        return 0
    done = results.finished
    counts = ", ".join(f"{f} {n}" for f, n in done.family.value_counts().items())
    print(f"report: {paths['html']} ({counts} finished trials)")
    print(f"csv: {paths['trials_csv']}, {paths['fronts_csv']}")
    for line in headline_lines(head, args.study):
        print(line)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the study's storage and artifacts until Ctrl-C."""
    from .dashboard import serve_dashboard

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {args.port}")
    serve_dashboard(study_config(args), host=args.host, port=args.port, print_fn=_say)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    """List the studies in a storage with their trial counts by state."""
    from .search.study import list_studies

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
