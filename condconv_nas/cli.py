"""The `condconv-nas` command line: parse, dispatch, and turn known failures into one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import (
    PROG,
    cmd_baselines,
    cmd_calibrate,
    cmd_confirm,
    cmd_cost,
    cmd_dashboard,
    cmd_export,
    cmd_fidelity,
    cmd_latency,
    cmd_presets,
    cmd_report,
    cmd_search,
    cmd_studies,
    cmd_train,
    cmd_worker,
)
from .errors import UserError
from .nn.cost import CONVENTION
from .search.config import SAMPLERS
from .train.interrupts import stop_on_signals

__all__ = ["main"]


def _add_arch_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help="a preset name (see `condconv-nas presets`)")
    src.add_argument("--arch", metavar="FILE.json", help="a spec JSON or an exported arch.json")


def _study_options() -> argparse.ArgumentParser:
    """The options of every command that works on a study file: the file, and --storage."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("study", metavar="studies/X.yaml")
    p.add_argument("--storage", metavar="URL",
                   help="journal file path or Optuna storage URL (default: the study file's)")
    return p


def _worker_options() -> argparse.ArgumentParser:
    """The options of every command that trains a study's runs: how many worker processes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes on this machine, sharing the storage")
    p.add_argument("--workers-per-gpu", type=int, metavar="N",
                   help="worker processes on each visible GPU when --workers is unset (default 1)")
    return p


def _study_parser(sub, name: str, workers: bool = False, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that works on a study file (with --storage), and with `workers` trains runs."""
    parents = [_study_options(), *([_worker_options()] if workers else [])]
    return sub.add_parser(name, parents=parents, **kwargs)


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

    p = sub.add_parser("latency", help="measured latency (batch 1), throughput and training "
                       "images/s, beside the static twin's",
                       description="Measure an architecture in isolation: batch-1 inference "
                       "latency (deployment), large-batch throughput (serving) and training "
                       "images/s, in interleaved rounds after warm-up, medians with p10-p90. "
                       "A CondConv network is measured beside its static twin (the same network "
                       "with CondConv off). Inference runs the exported graph's paths.")
    _add_arch_source(p)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch", type=int, metavar="B",
                   help="throughput and training batch (default 256, or 32 above 64 px)")
    p.add_argument("--threads", type=int, metavar="T", help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5, metavar="N",
                   help="interleaved rounds (default 5; each times 10 batch-1 calls)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument("--no-twin", action="store_true", help="skip the static twin")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("train", help="train an architecture on a dataset")
    _add_arch_source(p)
    p.add_argument("--dataset", required=True,
                   help="fashion-mnist, cifar10, cifar100, npz:DIR (train.npz/test.npz) or npz:FILE.npz, "
                   "imagefolder:DIR (DIR/train/<class>/*.png, optional val/, test/) or synthetic")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="imagefolder datasets: resize every image to S x S")
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

    p = _study_parser(sub, "search", workers=True, help="run or resume a search study")
    p.add_argument("--trials", type=int, metavar="N", help="total trials of the study")
    p.add_argument("--sampler", choices=SAMPLERS, help="default: the study file's (tpe)")
    p.add_argument("--control", action="store_true",
                   help="run the random-sampler control into the sibling study X.random")
    p.add_argument("--no-reproducible", action="store_true",
                   help="sample from whatever has finished (more throughput; a rerun or another "
                   "worker count gives other trials); a new study records it, an old one keeps "
                   "it from then on")
    p.set_defaults(func=cmd_search)

    p = _study_parser(sub, "worker", workers=True, help="join a running study from this machine",
                       description="Join a study that `search` (or `baselines`) started in a "
                       "shared storage (e.g. postgresql://...): claim trials until its budget is "
                       "used; on databases a heartbeat lets others retry a trial whose worker dies.")
    p.add_argument("--trials", type=int, metavar="N", help="total trials of the study")
    joins = p.add_mutually_exclusive_group()
    joins.add_argument("--baselines", action="store_true", help="join X.baseline instead of X")
    joins.add_argument("--confirm", action="store_true", help="join X.confirm instead of X")
    joins.add_argument("--calibrate", action="store_true", help="join X.calibrate instead of X")
    p.set_defaults(func=cmd_worker)

    p = _study_parser(sub, "confirm", workers=True, help="retrain the front architectures with fresh seeds",
                       description="Retrain every architecture on the search front (and on the "
                       "random control's front) with N fresh seeds into the sibling study "
                       "X.confirm; the report's claims use only these confirmed means. "
                       "Re-running resumes and confirms points that joined the front since.")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="fresh seeds per architecture (default: the study file's confirm.seeds, 3)")
    p.set_defaults(func=cmd_confirm)

    p = _study_parser(sub, "calibrate", workers=True, help="how long must the proxy train? (Kendall tau per "
                       "proxy budget)",
                       description="Train K architectures (space samples and baseline points, "
                       "spread over MAdds) at every proxy budget of the study file's calibration "
                       "ladder (epochs x training images) and at its reference budget, into the "
                       "sibling study X.calibrate; report each budget's Kendall tau with the "
                       "reference beside the tau of MAdds and params alone, its training seconds, "
                       "and the cheapest budget that ranks well. Re-running resumes.")
    p.add_argument("--archs", type=int, metavar="K",
                   help="architectures to train (default: the study file's calibration.archs, 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_calibrate)

    p = _study_parser(sub, "baselines", workers=True,
                      help="train width/depth/compound/experts baselines of a study",
                       description="Train the study's base network, CondConv off, scaled by "
                       "width, depth, compound (EfficientNet) and uniform expert counts over the "
                       "search's MAdds range, with the study's recipe, split and seeds, into the "
                       "sibling study X.baseline. Re-running resumes.")
    p.add_argument("--families", metavar="LIST", help="comma-separated subset of width,depth,"
                   "compound,experts (default: the study file's, else all)")
    p.add_argument("--points", type=int, metavar="N", help="grid points per scaling family "
                   "(default 5)")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per point (default: the study file's, else 3)")
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
    p.add_argument("--untrained", action="store_true",
                   help="export a trial without stored weights with random weights (no --retrain)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip timing model.ts and its static twin at batch 1 on this CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=cmd_export)

    p = _study_parser(sub, "fidelity", help="does the proxy rank architectures as longer training "
                       "does? (Kendall tau)")
    p.add_argument("--top", type=int, default=4, metavar="K",
                   help="searched and baseline architectures to retrain, each spread over MAdds "
                   "and accuracy ranks (default 4 each)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="long-run epochs (10)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=cmd_fidelity)

    p = _study_parser(sub, "dashboard", help="browse a study's storage in optuna-dashboard "
                      "(extra: dashboard)",
                      description="Serve optuna-dashboard on the study's storage (every study "
                      "there: the search, its baselines, confirmations and controls) with its "
                      "artifact folder, so trained weights download from each front trial; "
                      "prints the study's URL, Ctrl-C stops it. Needs "
                      "`pip install 'condconv-nas[dashboard]'`.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8080, metavar="N",
                   help="port to listen on (default 8080; 0 picks a free one)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("studies", help="list studies and their trials by state")
    p.add_argument("--storage", metavar="URL", help="default: every studies/*.journal")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_studies)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; bad input exits 2 with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_on_signals():
            return int(args.func(args) or 0)
    except UserError as err:
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
