"""The `condconv-nas` command line: parse, dispatch, and turn known failures into one-line errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .cost import CONVENTION
from .spec import ArchSpec, SpecError

__all__ = ["main"]

PROG = "condconv-nas"


class UsageError(Exception):
    """Bad input that the user can fix; printed as one line with exit code 2."""


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


def _add_arch_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help="a preset name (see `condconv-nas presets`)")
    src.add_argument("--arch", metavar="FILE.json", help="a spec JSON or an exported arch.json")


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; bad input exits 2 with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SpecError, UsageError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
