"""The front door: cn.Study runs a study end to end from Python, along the CLI's own path.

A study run through the Python object and the same file run through the CLI store the same
trials; a dict is validated as a file is, with the same one-line errors; progress goes to a
callback or a bar; the notebook page's code runs as written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

import condconv_nas as cn
from condconv_nas.cli import main
from condconv_nas.search.config import load_study_config
from condconv_nas.store.storage import open_storage
from tests.conftest import ROOT


def _data(tmp_path: Path, name: str) -> dict:
    return {"name": name, "space": str(ROOT / "search_spaces" / "tiny.yaml"),
            "dataset": "synthetic", "train_limit": 300, "val_size": 200, "seed": 0,
            "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "trials": 4, "workers": 1,
            "baselines": {"families": ["width"], "points": 2, "seeds": 2},
            "confirm": {"seeds": 2}, "storage": str(tmp_path / f"{name}.journal")}


def _stored(storage: str, name: str) -> list[tuple]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage, create=False))
    return [(t.number, t.state.name, t.params, t.values) for t in study.get_trials()]


def test_a_study_from_python_is_the_cli_study(tmp_path, capsys):
    data = _data(tmp_path, "p")
    study = cn.Study.from_dict(data, base_dir=tmp_path, progress=None)
    assert study.search()["ran"] == 4
    study.baselines()
    study.confirm()
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump({**data, "storage": str(tmp_path / "cli.journal")}))
    for command in ("search", "baselines", "confirm"):
        assert main([command, str(file)]) == 0
    for name in ("p", "p.baseline", "p.confirm"):
        assert _stored(data["storage"], name) == _stored(str(tmp_path / "cli.journal"), name)

    capsys.readouterr()
    assert main(["report", str(file), "--storage", data["storage"], "-o",
                 str(tmp_path / "cli.html"), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    head = study.headline()
    assert head.confirmed == cli["confirmed"] and head.holdout == cli["holdout"]
    assert {f: c.to_dict() for f, c in head.sources["search"].items()} == cli["headline"]
    written = study.report(tmp_path / "py.html")
    assert written.paths["html"].is_file() and written.headline == head

    frames = study.results()
    assert len(frames.trials) == 4 and set(frames.trials.family) == {"search"}
    assert set(frames.baselines.family) == {"width"}
    assert (frames.baselines.groupby("label").seed.nunique() == 2).all()  # seeds: 2 a point
    assert frames.confirmations.confirm_of.notna().all() and len(frames.confirmations)
    assert set(frames.controls.family) <= {"width"}
    paths = study.export(pick="best", out=tmp_path / "exp", latency=False)
    card = json.loads(paths["arch"].read_text())
    assert card["format"] == "condconv-nas/arch"


def test_a_dict_is_checked_as_a_file_is(tmp_path):
    bad = {**_data(tmp_path, "b"), "trials": 0}
    file = tmp_path / "b.yaml"
    file.write_text(yaml.safe_dump(bad))
    with pytest.raises(cn.UserError) as from_file:
        load_study_config(file)
    with pytest.raises(cn.UserError) as from_dict:
        cn.Study.from_dict(bad, base_dir=tmp_path)
    assert str(from_dict.value).replace("study dict", str(file)) == str(from_file.value)
    assert "\n" not in str(from_dict.value)
    with pytest.raises(cn.UserError, match="seeds: must be an integer >= 2"):
        cn.Study.from_dict(_data(tmp_path, "c"), base_dir=tmp_path, progress=None).confirm(seeds=1)
    # Relative paths are relative to base_dir, as a file's are to its folder.
    rel = {**_data(tmp_path, "r"), "space": "tiny.yaml"}
    rel.pop("storage")
    (tmp_path / "tiny.yaml").write_text((ROOT / "search_spaces" / "tiny.yaml").read_text())
    study = cn.Study.from_dict(rel, base_dir=tmp_path)
    assert study.storage == str(tmp_path / "r.journal")


def test_progress_to_a_callback_or_a_bar(tmp_path, capsys):
    lines: list[str] = []
    study = cn.Study.from_dict({**_data(tmp_path, "g"), "trials": 2}, base_dir=tmp_path,
                               progress=lines.append)
    study.search()
    assert any(re.search(r"\btrial\s+1\b", line) for line in lines), lines
    capsys.readouterr()
    barred = cn.Study.from_dict({**_data(tmp_path, "g"), "trials": 3}, base_dir=tmp_path,
                               progress="bar")
    barred.search()
    err = capsys.readouterr().err
    assert "3/3" in err and "trial" not in err  # the bar, ending where the study does


def _notebook_code() -> list[str]:
    page = (ROOT / "docs" / "notebook.md").read_text()
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


def test_the_notebook_page_runs(tmp_path, monkeypatch):
    blocks = _notebook_code()
    assert len(blocks) >= 4
    (tmp_path / "studies").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "tiny.yaml").write_text(
        (ROOT / "search_spaces" / "tiny.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "docs/notebook.md", "exec"), scope)  # noqa: S102
    assert Path("reports/notebook.html").is_file()
    assert (Path(scope["paths"]["arch"])).is_file()
