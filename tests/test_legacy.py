"""A study written by release 0.1.0 (tests/data/legacy) still reports, resumes and exports.

The journal, its study file and the weights of its best trial were written by the 0.1.0 code
(before the study module was split and the trial record got one definition): search (4 trials,
one a reuse), its random control (2) and width baselines (3 points, 1 seed). The test works on a
copy, so the checked-in files never change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import condconv_nas as cn
from condconv_nas.analysis.results import load_results
from condconv_nas.cli import main
from condconv_nas.store.storage import open_storage
from tests.conftest import ROOT, finished

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.fixture()
def legacy(tmp_path) -> Path:
    """A copy of the legacy study whose space file points at this checkout's tiny space."""
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    study_file = folder / "legacy.yaml"
    data = yaml.safe_load(study_file.read_text())
    data["space"] = str(ROOT / "search_spaces" / "tiny.yaml")
    study_file.write_text(yaml.safe_dump(data))
    return study_file


def test_legacy_study_reads_into_the_same_frames(legacy, stored_trials):
    res = load_results(open_storage(str(legacy.parent / "legacy.journal"), create=False), "legacy")
    t = res.trials
    assert sorted(t.family.value_counts().items()) == [("random", 2), ("search", 4), ("width", 3)]
    # Read straight from the stored attributes, not through the record: the frames agree.
    raw = {t.number: t for t in stored_trials(legacy, "legacy")}
    search = t[t.family == "search"].set_index("number")
    for number, frozen in raw.items():
        assert search.loc[number, "madds"] == frozen.user_attrs["madds"]
        assert search.loc[number, "val_acc"] == pytest.approx(frozen.values[0])
        assert (search.loc[number, "weights_artifact"] or "") == frozen.user_attrs.get(
            "weights_artifact", "")
    reused = search[search.reused_from.notna()]
    assert len(reused) == 1 and "reused_from" in raw[int(reused.index[0])].user_attrs
    width = t[t.family == "width"]
    labels = {f.user_attrs["baseline_label"] for f in stored_trials(legacy, "legacy.baseline")}
    assert set(width.label) == labels and width.multiplier.notna().all()


def test_legacy_study_reports(legacy, tmp_path, capsys):
    out = tmp_path / "legacy.html"
    assert main(["report", str(legacy), "-o", str(out)]) == 0
    page = out.read_text()
    assert "condconv-nas report: legacy" in page and page.count("Plotly.newPlot") >= 3
    capsys.readouterr()
    assert main(["report", str(legacy), "--json"]) == 0
    head = json.loads(capsys.readouterr().out)
    assert head["search_order"].startswith("not run reproducibly")


def test_legacy_study_resumes_without_touching_stored_trials(legacy, capsys, stored_trials):
    before = stored_trials(legacy, "legacy")
    assert main(["search", str(legacy), "--trials", "5"]) == 0
    assert "not run reproducibly" in capsys.readouterr().out  # and its order is not rewritten
    assert "search_order" not in optuna.load_study(
        study_name="legacy", storage=open_storage(str(legacy.parent / "legacy.journal"))).user_attrs
    after = stored_trials(legacy, "legacy")
    # The new trial is trained (COMPLETE), or skipped as over budget or a repeat (PRUNED, why).
    new = after[4]
    assert len(after) == 5 and finished(new)
    for old, new in zip(before, after):
        assert (old.values, old.params, old.user_attrs) == (new.values, new.params, new.user_attrs)
    # The baselines were all trained by 0.1.0: the new reader sees every point as done.
    assert main(["baselines", str(legacy)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_legacy_study_exports_its_stored_weights(legacy, tmp_path, stored_trials):
    out = tmp_path / "export"
    assert main(["export", str(legacy), "--pick", "best", "-o", str(out)]) == 0
    arch = json.loads((out / "arch.json").read_text())
    best = max((t for t in stored_trials(legacy, "legacy") if t.values and t.values[0] > 0),
               key=lambda t: (t.values[0], -t.values[1]))
    assert arch["provenance"]["trial"] == best.number
    stored = torch.load(legacy.parent / "legacy.artifacts" / best.user_attrs["weights_artifact"],
                        map_location="cpu")
    exported = torch.load(out / "weights.pt", map_location="cpu")
    assert stored.keys() == exported.keys()
    assert all(torch.equal(stored[k], exported[k]) for k in stored)
    model = cn.load_arch(out)
    assert sum(p.numel() for p in model.parameters()) == best.user_attrs["params"]


def test_legacy_study_keeps_its_split_layout_and_claims_nothing(legacy, capsys):
    from condconv_nas.analysis.claims import NO_HOLDOUT
    from condconv_nas.search.config import load_study_config, load_study_data
    from condconv_nas.search.match import adopt_stored_layout
    from condconv_nas.train.data import load_dataset

    cfg = load_study_config(legacy)
    assert cfg.holdout == "carve"  # what a new study would carve
    kept = adopt_stored_layout(cfg)
    assert kept.holdout is None  # stored before holdout splits: its own layout, no holdout
    data, old = load_study_data(kept), load_dataset("synthetic")  # the 0.1.0 layout
    assert data.holdout is None and torch.equal(data.train.images, old.train.images)
    assert main(["confirm", str(legacy), "--seeds", "2"]) == 0
    assert "stored before holdout splits existed" in capsys.readouterr().out
    assert main(["report", str(legacy), "--json"]) == 0
    head = json.loads(capsys.readouterr().out)
    assert head["confirmed"] is True and head["holdout"] is False
    assert head["headline"] and all(c["reason"] == NO_HOLDOUT and not c["significant"]
                                    for c in head["headline"].values())
