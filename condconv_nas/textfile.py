"""Reading the user's text files (study and space YAML, arch JSON) with one-line errors.

YAML is read strictly: a duplicate key is an error (PyYAML keeps the last silently) and aliases
are refused (nested aliases expand exponentially: a few hundred bytes can exhaust memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_text", "read_yaml"]


def read_text(path: str | Path, error: type[Exception]) -> str:
    """A regular UTF-8 file's text; anything else raises `error` naming the file and the fix."""
    file = Path(path)
    if file.exists() and not file.is_file() and not file.is_dir():
        raise error(f"{path}: not a regular file; give the path of a text file")
    try:
        data = file.read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not supported; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}; keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, error: type[Exception]) -> Any:
    """Parse a YAML file; unreadable or malformed files raise `error` naming file and line."""
    text = read_text(path, error)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}: not valid YAML{where} ({getattr(err, 'problem', err)})") from None
