"""Bad input, tried systematically: each case must end with one clear line on stderr, exit code 2,
no traceback, and no change to the existing storage (its bytes and its folder, before and after)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from condconv_nas.cli import main
from condconv_nas.search.study import load_study_config, run_search
from tests.conftest import ROOT

TINY = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
STUDY = {"name": "good", "space": "space.yaml", "dataset": "synthetic",
         "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "trials": 2, "seed": 0,
         "train_limit": 500}


def space(**change):
    data = {**TINY, **change}
    return {k: v for k, v in data.items() if v is not None}


def stage(**change):
    s = {"stage": 5, "experts": [0, 2, 4], "depth": [1, 2]}
    s.update(change)
    return {"stages": [{k: v for k, v in s.items() if v is not None}]}


def study(**change):
    data = {**STUDY, **change}
    return {k: v for k, v in data.items() if v is not None}


# (id, files to write {name: yaml data | raw text}, argv with {d} for the folder, stderr needle)
SEARCH = ["search", "{d}/study.yaml", "--storage", "{d}/store.journal"]
CASES = [
    # --- space files ---
    ("space-broken-yaml", {"space.yaml": "stages: [\n"}, SEARCH, "not valid YAML"),
    ("space-not-mapping", {"space.yaml": "- 1\n- 2\n"}, SEARCH, "must be a mapping"),
    ("space-unknown-key", {"space.yaml": space(colour="red")}, SEARCH, "colour: unknown key"),
    ("space-no-base", {"space.yaml": space(base=None)}, SEARCH, "base: is required"),
    ("space-unknown-preset", {"space.yaml": space(base="resnet50")}, SEARCH, "'resnet50' is unknown"),
    ("space-base-number", {"space.yaml": space(base=123)}, SEARCH, "base: must be a preset name"),
    ("space-budget-negative", {"space.yaml": space(budget_madds=-5)}, SEARCH, "budget_madds"),
    ("space-budget-zero", {"space.yaml": space(budget_madds=0)}, SEARCH, "budget_madds"),
    ("space-budget-word", {"space.yaml": space(budget_madds="lots")}, SEARCH, "budget_madds"),
    ("space-budget-bool", {"space.yaml": space(budget_madds=True)}, SEARCH, "budget_madds"),
    ("space-stages-empty", {"space.yaml": space(stages=[])}, SEARCH, "empty list"),
    ("space-stages-mapping", {"space.yaml": space(stages={"a": 1})}, SEARCH, "must be a list"),
    ("space-stage-not-mapping", {"space.yaml": space(stages=[5])}, SEARCH, "stages[0]"),
    ("space-stage-zero", {"space.yaml": space(**stage(stage=0))}, SEARCH, "stage number"),
    ("space-stage-too-big", {"space.yaml": space(**stage(stage=99))}, SEARCH, "stage number"),
    ("space-stage-unknown-key", {"space.yaml": space(**stage(kernel=3))}, SEARCH, "kernel: unknown key"),
    ("space-experts-empty", {"space.yaml": space(**stage(experts=[]))}, SEARCH, "empty list"),
    ("space-experts-word", {"space.yaml": space(**stage(experts=["four"]))}, SEARCH, "experts"),
    ("space-experts-negative", {"space.yaml": space(**stage(experts=[-2]))}, SEARCH, "experts"),
    ("space-experts-repeated", {"space.yaml": space(**stage(experts=[2, 2]))}, SEARCH, "repeated"),
    ("space-width-repeated-as-float", {"space.yaml": space(**stage(width=[1, 1.0]))}, SEARCH,
     "repeated"),
    ("space-budget-below-cheapest", {"space.yaml": space(budget_madds=1000)}, SEARCH,
     "below the cheapest architecture"),
    ("baselines-budget-below-cheapest", {"space.yaml": space(budget_madds=1000)},
     ["baselines", "{d}/study.yaml", "--storage", "{d}/store.journal"],
     "below the cheapest architecture"),
    ("calibrate-budget-below-cheapest", {"space.yaml": space(budget_madds=1000), "study.yaml": study(
        calibration={"epochs": [1], "train_images": [200, "all"]})},
     ["calibrate", "{d}/study.yaml", "--storage", "{d}/store.journal"],
     "below the cheapest architecture"),
    ("space-width-zero", {"space.yaml": space(**stage(width=[0]))}, SEARCH, "width"),
    ("space-width-word", {"space.yaml": space(**stage(width=["wide"]))}, SEARCH, "width"),
    ("space-depth-reversed", {"space.yaml": space(**stage(depth=[3, 1]))}, SEARCH, "depth"),
    ("space-depth-one-value", {"space.yaml": space(**stage(depth=[1]))}, SEARCH, "depth"),
    ("space-depth-bool", {"space.yaml": space(**stage(depth=[True, 2]))}, SEARCH, "depth"),
    ("space-resolution-empty", {"space.yaml": space(resolution=[])}, SEARCH, "resolution"),
    ("space-resolution-tiny", {"space.yaml": space(resolution=[2])}, SEARCH, "resolution"),
    ("space-stage-no-choice", {"space.yaml": space(stages=[{"stage": 5}])}, SEARCH, "names no choice"),
    ("space-stage-twice", {"space.yaml": space(stages=[{"stage": 5, "depth": [1, 2]},
                                                       {"stage": 5, "depth": [1, 2]}])},
     SEARCH, "repeat"),
    # --- study files ---
    ("study-broken-yaml", {"study.yaml": "name: [x\n"}, SEARCH, "not valid YAML"),
    ("study-not-mapping", {"study.yaml": "just words\n"}, SEARCH, "must be a mapping"),
    ("study-unknown-key", {"study.yaml": study(epochs=3)}, SEARCH, "epochs: unknown key"),
    ("study-no-name", {"study.yaml": study(name=None)}, SEARCH, "name: is required"),
    ("study-name-slash", {"study.yaml": study(name="a/b")}, SEARCH, "name: must be"),
    ("study-no-space", {"study.yaml": study(space=None)}, SEARCH, "space: is required"),
    ("study-space-missing-file", {"study.yaml": study(space="nowhere.yaml")}, SEARCH, "cannot read"),
    ("study-dataset-number", {"study.yaml": study(dataset=7)}, SEARCH, "dataset"),
    ("study-trials-zero", {"study.yaml": study(trials=0)}, SEARCH, "trials"),
    ("study-trials-negative", {"study.yaml": study(trials=-3)}, SEARCH, "trials"),
    ("study-trials-word", {"study.yaml": study(trials="many")}, SEARCH, "trials"),
    ("study-sampler-unknown", {"study.yaml": study(sampler="bayes")}, SEARCH, "sampler"),
    ("study-seed-negative", {"study.yaml": study(seed=-1)}, SEARCH, "seed"),
    ("study-workers-zero", {"study.yaml": study(workers=0)}, SEARCH, "workers"),
    ("study-budget-negative", {"study.yaml": study(budget_madds=-1)}, SEARCH, "budget_madds"),
    ("study-device-tpu", {"study.yaml": study(device="tpu")}, SEARCH, "device"),
    ("study-recipe-unknown", {"study.yaml": study(recipe={"optimizer": "adam"})}, SEARCH, "recipe.optimizer"),
    ("study-recipe-epochs-zero", {"study.yaml": study(recipe={"epochs": 0})}, SEARCH, "epochs"),
    ("study-recipe-lr-negative", {"study.yaml": study(recipe={"lr": -0.1})}, SEARCH, "lr"),
    ("study-recipe-not-mapping", {"study.yaml": study(recipe=[1, 2])}, SEARCH, "recipe"),
    ("study-pruner-word", {"study.yaml": study(pruner="on")}, SEARCH, "pruner"),
    ("study-pruner-k-zero", {"study.yaml": study(pruner={"k": 0})}, SEARCH, "pruner.k"),
    ("study-baselines-family", {"study.yaml": study(baselines={"families": ["height"]})}, SEARCH,
     "baselines.families"),
    ("study-baselines-points", {"study.yaml": study(baselines={"points": 0})}, SEARCH,
     "baselines.points"),
    ("study-heartbeat-grace", {"study.yaml": study(heartbeat={"interval": 10, "grace": 5})}, SEARCH,
     "heartbeat.grace"),
    ("study-storage-list", {"study.yaml": study(storage=["a"])}, SEARCH, "storage"),
    ("study-artifacts-empty", {"study.yaml": study(artifacts="")}, SEARCH, "artifacts"),
    ("study-dataset-unknown", {"study.yaml": study(dataset="imagenet")}, SEARCH, "imagenet"),
    # --- storage URLs ---
    ("storage-unreachable-pg", {}, ["search", "{d}/study.yaml", "--storage",
                                    "postgresql://nobody@127.0.0.1:1/none"], "cannot be opened"),
    ("storage-sqlite-no-folder", {}, ["search", "{d}/study.yaml", "--storage",
                                      "sqlite:////nonexistent/dir/x.db"], "does not exist"),
    ("storage-journal-no-folder", {}, ["search", "{d}/study.yaml", "--storage",
                                       "/nonexistent/dir/x.journal"], "does not exist"),
    ("storage-unknown-scheme", {}, ["search", "{d}/study.yaml", "--storage", "foo://bar"],
     "cannot be opened"),
    ("storage-report-missing", {}, ["report", "{d}/study.yaml", "--storage",
                                    "{d}/absent.journal"], "does not exist"),
    ("storage-export-wrong-study", {}, ["export", "{d}/other.yaml", "--storage",
                                        "{d}/store.journal"], "not in storage"),
    # --- arch JSON ---
    ("arch-not-json", {"a.json": "{spec: nope"}, ["cost", "--arch", "{d}/a.json"], "not valid JSON"),
    ("arch-a-list", {"a.json": "[1, 2]"}, ["cost", "--arch", "{d}/a.json"], "must be an object"),
    ("arch-format", {"a.json": json.dumps({"format": "keras", "version": 1})},
     ["cost", "--arch", "{d}/a.json"], "is not condconv-nas/arch"),
    ("arch-version", {"a.json": json.dumps({"format": "condconv-nas/arch", "version": 9})},
     ["cost", "--arch", "{d}/a.json"], "version 9"),
    ("arch-no-stages", {"a.json": json.dumps({"name": "x"})}, ["cost", "--arch", "{d}/a.json"],
     "stages"),
    ("arch-even-kernel", {"a.json": "EVEN_KERNEL"}, ["cost", "--arch", "{d}/a.json"], "kernel"),
    ("arch-stride-3", {"a.json": "STRIDE_3"}, ["cost", "--arch", "{d}/a.json"], "stride"),
    ("arch-unknown-field", {"a.json": "UNKNOWN_FIELD"}, ["cost", "--arch", "{d}/a.json"], "colour"),
    ("arch-missing-file", {}, ["cost", "--arch", "{d}/none.json"], "cannot read"),
    ("arch-train-version", {"a.json": json.dumps({"format": "condconv-nas/arch", "version": 0})},
     ["train", "--arch", "{d}/a.json", "--dataset", "synthetic"], "version 0"),
    # --- dataset folders ---
    ("data-npz-missing", {}, ["train", "--preset", "mobilenet_v2_proxy28", "--dataset",
                              "npz:{d}/nothing"], "does not exist"),
    ("data-npz-no-train", {"npzdir/readme.txt": "x"}, ["train", "--preset", "mobilenet_v2_proxy28",
                                                        "--dataset", "npz:{d}/npzdir"], "train.npz"),
    ("data-npz-no-labels", {"npzdir/train.npz": "NPZ_NO_LABELS"},
     ["train", "--preset", "mobilenet_v2_proxy28", "--dataset", "npz:{d}/npzdir"], "labels"),
    ("data-npz-mismatch", {"npzdir/train.npz": "NPZ_MISMATCH"},
     ["train", "--preset", "mobilenet_v2_proxy28", "--dataset", "npz:{d}/npzdir"], "labels"),
    ("data-npz-float", {"npzdir/train.npz": "NPZ_FLOAT"},
     ["train", "--preset", "mobilenet_v2_proxy28", "--dataset", "npz:{d}/npzdir"], "uint8"),
    ("data-npz-garbage", {"npzdir/train.npz": "not a zip"},
     ["train", "--preset", "mobilenet_v2_proxy28", "--dataset", "npz:{d}/npzdir"], "corrupt"),
    ("data-fmnist-corrupt", {"fm/train-images-idx3-ubyte.gz": "GZ_GARBAGE",
                             "fm/train-labels-idx1-ubyte.gz": "GZ_GARBAGE",
                             "fm/t10k-images-idx3-ubyte.gz": "GZ_GARBAGE",
                             "fm/t10k-labels-idx1-ubyte.gz": "GZ_GARBAGE"},
     ["train", "--preset", "mobilenet_v2_proxy28", "--dataset", "fashion-mnist", "--data-dir",
      "{d}/fm"], "dataset-fashion-mnist"),
    ("data-cifar-missing", {}, ["train", "--preset", "mobilenet_v2_proxy32", "--dataset", "cifar10",
                                "--data-dir", "{d}/none"], "cifar"),
    ("data-search-npz-missing", {"study.yaml": study(dataset="npz:nothing")}, SEARCH, "npz"),
    # --- files that are not what they claim, strict YAML, bounds ---
    ("study-latin1", {"study.yaml": "LATIN1"}, SEARCH, "not UTF-8"),
    ("arch-latin1", {"a.json": "LATIN1"}, ["cost", "--arch", "{d}/a.json"], "not UTF-8"),
    ("study-fifo", {"study.yaml": "FIFO"}, SEARCH, "not a regular file"),
    ("study-duplicate-key", {"study.yaml": yaml.safe_dump(STUDY) + "trials: 9\n"}, SEARCH,
     "duplicate key 'trials'"),
    ("space-alias", {"space.yaml": "a: &x [1, 2]\nb: *x\n"}, SEARCH, "aliases (*x)"),
    ("study-number-key", {"study.yaml": yaml.safe_dump(STUDY) + "1: one\n"}, SEARCH,
     "1: unknown key"),
    ("space-stage-number-key", {"space.yaml": yaml.safe_dump(TINY).replace(
        "stage: 5", "stage: 5\n  1: one", 1)}, SEARCH, "1: unknown key"),
    ("study-recipe-nesterov-word", {"study.yaml": study(recipe={"nesterov": "maybe"})}, SEARCH,
     "recipe.nesterov"),
    ("study-recipe-bf16-word", {"study.yaml": study(recipe={"bf16": "no"})}, SEARCH,
     "recipe.bf16"),
    ("study-recipe-epochs-bool", {"study.yaml": study(recipe={"epochs": True})}, SEARCH,
     "recipe.epochs"),
    ("study-recipe-epochs-huge", {"study.yaml": study(recipe={"epochs": 10 ** 12})}, SEARCH,
     "recipe.epochs"),
    ("study-batch-above-split", {"study.yaml": study(recipe={"batch_size": 100_000})}, SEARCH,
     "recipe.batch_size"),
    ("baselines-families-only-commas", {}, ["baselines", "{d}/study.yaml", "--storage",
                                            "{d}/store.journal", "--families", ","],
     "--families: names no family"),
    ("baselines-batch-above-split", {"study.yaml": study(recipe={"batch_size": 100_000})},
     ["baselines", "{d}/study.yaml", "--storage", "{d}/store.journal"], "recipe.batch_size"),
    *([("study-device-cuda-no-gpu", {"study.yaml": study(device="cuda")}, SEARCH, "no CUDA GPU"),
       ("baselines-device-cuda-no-gpu", {"study.yaml": study(device="cuda")},
        ["baselines", "{d}/study.yaml", "--storage", "{d}/store.journal"], "no CUDA GPU")]
      if not torch.cuda.is_available() else []),
    ("study-seed-huge", {"study.yaml": study(seed=10 ** 23)}, SEARCH, "seed"),
    ("storage-not-a-journal", {"notes.journal": "some notes\n"},
     ["search", "{d}/study.yaml", "--storage", "{d}/notes.journal"], "not an Optuna journal"),
    ("storage-a-folder", {"sub/x.txt": "x"}, ["search", "{d}/study.yaml", "--storage", "{d}/sub"],
     "is a folder"),
    ("storage-empty", {}, ["search", "{d}/study.yaml", "--storage", ""], "storage is empty"),
    ("storage-report-unreachable-pg", {}, ["report", "{d}/study.yaml", "--storage",
                                           "postgresql://nobody@127.0.0.1:1/none"],
     "cannot be opened"),
    ("report-output-folder", {"out.html/x": "x"}, ["report", "{d}/study.yaml", "--storage",
                                                   "{d}/store.journal", "-o", "{d}/out.html"],
     "is a folder"),
    ("export-pick-superscript", {}, ["export", "{d}/study.yaml", "--storage", "{d}/store.journal",
                                     "--pick", "trial=\u00b2"], "--pick"),
    ("train-limit-negative", {}, ["train", "--preset", "mobilenet_v2_proxy28", "--dataset",
                                  "synthetic", "--train-limit", "-5"], "--train-limit"),
    ("train-seed-huge", {}, ["train", "--preset", "mobilenet_v2_proxy28", "--dataset", "synthetic",
                             "--seed", str(10 ** 23)], "recipe.seed"),
]


SPECIAL = {"NPZ_NO_LABELS", "NPZ_MISMATCH", "NPZ_FLOAT", "GZ_GARBAGE", "EVEN_KERNEL", "STRIDE_3",
           "UNKNOWN_FIELD", "LATIN1", "FIFO"}


def _special(path: Path, token: str) -> None:
    """Write the binary or derived contents some cases need."""
    if token.startswith("NPZ_"):
        x = np.zeros((8, 8, 8, 1), np.uint8)
        arrays = {"NPZ_NO_LABELS": {"images": x},
                  "NPZ_MISMATCH": {"images": x, "labels": np.zeros(5, np.int64)},
                  "NPZ_FLOAT": {"images": x.astype(np.float32), "labels": np.zeros(8, np.int64)}}
        with open(path, "wb") as f:
            np.savez(f, **arrays[token])
    elif token == "LATIN1":
        path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    elif token == "FIFO":
        path.unlink(missing_ok=True)
        os.mkfifo(path)  # reading it would wait for a writer forever
    elif token == "GZ_GARBAGE":
        path.write_bytes(gzip.compress(b"definitely not IDX"))
    else:
        from condconv_nas.nn.presets import get_preset

        spec = get_preset("mobilenet_v2_proxy28").to_dict()
        if token == "EVEN_KERNEL":
            spec["stages"][0]["kernel"] = 4
        elif token == "STRIDE_3":
            spec["stages"][0]["stride"] = 3
        elif token == "UNKNOWN_FIELD":
            spec["stages"][0]["colour"] = "red"
        path.write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A folder with a finished study (store.journal) that no bad input may change."""
    d = tmp_path_factory.mktemp("bad")
    (d / "space.yaml").write_text(yaml.safe_dump(TINY))
    (d / "study.yaml").write_text(yaml.safe_dump({**STUDY, "storage": "store.journal"}))
    (d / "other.yaml").write_text(yaml.safe_dump({**STUDY, "name": "other"}))
    run_search(load_study_config(d / "study.yaml"), print_fn=lambda s: None)
    return d


def _fingerprint(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_the_table_is_big_enough():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, stored, tmp_path, capsys):
    name, files, argv, needle = case
    # Each case works in a copy of the study folder's files it may replace.
    d = tmp_path / "case"
    d.mkdir()
    for f in ("space.yaml", "study.yaml", "other.yaml"):
        (d / f).write_text((stored / f).read_text())
    for rel, content in files.items():
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content in SPECIAL:
            _special(path, content)
        else:
            path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    store = str(stored / "store.journal")
    args = [a.replace("{d}/store.journal", store).replace("{d}", str(d)) for a in argv]
    before = _fingerprint(stored)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (name, code, err)
    assert len(lines) == 1 and lines[0].startswith("condconv-nas: error: "), (name, err)
    assert "Traceback" not in err
    assert needle.lower() in lines[0].lower(), (name, lines[0])
    assert _fingerprint(stored) == before, name  # nothing stored changed
    assert not (d / "store.journal").exists()  # and nothing was created beside the case files
