"""Epoch checkpoints: a run stopped after an epoch and started again ends exactly where an
uninterrupted run ends; a checkpoint of another schedule or a damaged file is not used."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from condconv_nas.nn.model import build_model
from condconv_nas.train.checkpoint import checkpoint_path, load_checkpoint
from condconv_nas.train.data import load_dataset
from condconv_nas.train.train import Recipe, fit
from tests.test_train import TINY

# Dropout on, so the global random stream (and not only the data generator) must be restored.
SPEC = dataclasses.replace(TINY, dropout=0.2)
RECIPE = Recipe(epochs=3, batch_size=64, lr=0.2, seed=5)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", val_size=200, train_limit=640)


def model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(SPEC)


def stop_at(epoch: int):
    """on_epoch that kills the run (as a signal would) once `epoch` is reached."""
    def on_epoch(e: int, acc: float) -> None:
        if e == epoch:
            raise KeyboardInterrupt
    return on_epoch


def test_resumed_run_equals_uninterrupted_run(tmp_path, data):
    straight = fit(model(), data, RECIPE)
    ckpt = checkpoint_path(tmp_path, run="a")
    with pytest.raises(KeyboardInterrupt):
        fit(model(), data, RECIPE, on_epoch=stop_at(2), checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1 and len(state["curve"]) == 1  # epoch 2 never finished
    # A fresh model with another init: every weight must come from the checkpoint.
    resumed = fit(model(seed=9), data, RECIPE, checkpoint=ckpt)
    assert resumed.resumed_epochs == 1 and resumed.epochs_run == 3
    assert [c["loss"] for c in resumed.curve] == [c["loss"] for c in straight.curve]
    assert [c["val_acc"] for c in resumed.curve] == [c["val_acc"] for c in straight.curve]
    assert resumed.val_acc == straight.val_acc
    # Time spent before the stop is counted with the run's.
    assert resumed.seconds > state["seconds"] and resumed.cpu_seconds > state["cpu_seconds"]
    assert load_checkpoint(ckpt)["epoch"] == 2  # the last epoch is never saved: the run is done


def test_a_checkpoint_of_another_schedule_or_a_damaged_file_is_not_used(tmp_path, data):
    ckpt = checkpoint_path(tmp_path, run="b")
    with pytest.raises(KeyboardInterrupt):
        fit(model(), data, RECIPE, on_epoch=stop_at(2), checkpoint=ckpt)
    # Four epochs have another learning-rate schedule: the 3-epoch state is not theirs.
    longer = fit(model(), data, dataclasses.replace(RECIPE, epochs=4), checkpoint=ckpt)
    fresh = fit(model(), data, dataclasses.replace(RECIPE, epochs=4))
    assert longer.resumed_epochs == 0 and longer.val_acc == fresh.val_acc
    ckpt.write_bytes(b"not a checkpoint")
    assert load_checkpoint(ckpt) is None
    again = fit(model(), data, RECIPE, checkpoint=ckpt)
    assert again.resumed_epochs == 0 and again.epochs_run == 3


def test_checkpoint_paths_are_keyed_by_every_field(tmp_path):
    a = checkpoint_path(tmp_path, arch="x", seed=0, recipe={"lr": 0.1})
    assert a == checkpoint_path(tmp_path, recipe={"lr": 0.1}, seed=0, arch="x")  # order-free
    assert a != checkpoint_path(tmp_path, arch="x", seed=1, recipe={"lr": 0.1})
    assert a != checkpoint_path(tmp_path, arch="x", seed=0, recipe={"lr": 0.2})
    assert a.parent == tmp_path / "checkpoints"
