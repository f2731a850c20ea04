"""mkdocs hooks: the CLI reference written from the parser, and a warning (an error under
--strict) for every public module, class or function of the package without a docstring."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.condconv_nas")
PACKAGE = Path(__file__).resolve().parents[2] / "condconv_nas"
MARKER = "<!-- cli-reference -->"


def on_pre_build(config) -> None:
    """Every public definition of the package has a docstring: the API pages are made of them."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(PACKAGE.parent)
        if ast.get_docstring(tree) is None:
            log.warning(f"{where}: the module has no docstring")
        for node, owner in _public(tree):
            if ast.get_docstring(node) is None:
                name = f"{owner}.{node.name}" if owner else node.name
                log.warning(f"{where}:{node.lineno}: {name} has no docstring")


def _public(tree: ast.Module):
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, defs) and not node.name.startswith("_"):
            yield node, ""
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (isinstance(item, defs) and not item.name.startswith("_")
                            and not _is_override(item)):
                        yield item, node.name


def _is_override(node) -> bool:
    """Methods that implement a base class's interface (their base documents them)."""
    return any(isinstance(d, ast.Name) and d.id in ("override",) for d in node.decorator_list) \
        or node.name in _INTERFACE


# Optuna sampler/storage interface methods and dataclass helpers documented by their bases.
_INTERFACE = {"infer_relative_search_space", "sample_relative", "sample_independent",
              "before_trial", "after_trial", "reseed_rng", "forward", "extra_repr"}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the CLI page's marker with every subcommand's --help."""
    if MARKER not in markdown:
        return markdown
    import argparse

    from condconv_nas.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = []
    for name, command in sub.choices.items():
        command.prog = f"condconv-nas {name}"
        parts.append(f"### `{name}`\n\n```\n{command.format_help().rstrip()}\n```\n")
    return markdown.replace(MARKER, "\n".join(parts))
