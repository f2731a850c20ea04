"""The docs: a README that fits on a page, a module map that names every module, and a site that
builds strictly (a broken link or a public definition without a docstring fails it)."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

HOOKS = ROOT / "docs" / "hooks" / "build.py"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_fits_on_a_page_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert text.index("pip install") < text.index("## The latest finding")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_the_module_map_names_every_module():
    page = (ROOT / "docs" / "modules.md").read_text()
    rows = set(re.findall(r"^\| (\w+) \| `(\w+\.py)` \|", page, flags=re.M))
    found = set()
    for path in (ROOT / "condconv_nas").rglob("*.py"):
        if path.name in ("__init__.py", "_version.py"):
            continue
        wing = path.parent.name if path.parent.name != "condconv_nas" else None
        found.add((wing or ("root" if path.stem in ("errors", "textfile") else "top"), path.name))
    assert rows == found


def test_a_missing_docstring_is_a_warning(tmp_path, monkeypatch, caplog):
    hooks = _hooks()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "ok.py").write_text('"""Fine."""\n\ndef f():\n    """Fine."""\n\ndef _private():\n    pass\n')
    (pkg / "bad.py").write_text('"""Fine."""\n\nclass C:\n    """Fine."""\n\n    def m(self):\n'
                                '        return 1\n')
    monkeypatch.setattr(hooks, "PACKAGE", pkg)
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.condconv_nas"):
        hooks.on_pre_build(None)
    found = [r.getMessage() for r in caplog.records]
    assert found == [f"{Path('pkg') / 'bad.py'}:6: C.m has no docstring"]


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="the docs extra is not installed")
def test_the_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    proc = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "usage: condconv-nas search" in cli  # the reference, written from the parser
    assert "from_dict" in (tmp_path / "site" / "api" / "index.html").read_text()
