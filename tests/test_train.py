"""fit(): it learns, it is reproducible, and it stops with a clear reason."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from condconv_nas.nn.model import build_model
from condconv_nas.nn.spec import ArchSpec, StageSpec
from condconv_nas.train.data import load_dataset
from condconv_nas.train.train import (
    NonFiniteLossError,
    Recipe,
    RecipeError,
    _lr_factor,
    _param_groups,
    few_steps_note,
    fit,
    resolve_device,
)

TINY = ArchSpec(name="tiny", stem_channels=8, stem_stride=1, head_channels=0, input_size=16,
                in_channels=1, num_classes=4, dropout=0.0,
                stages=(StageSpec(1, 3, 1, 1.0, 8, 0.25), StageSpec(1, 3, 2, 3.0, 16, 0.25, (4,))))


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(TINY)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", val_size=400)


def test_learns_synthetic_data_far_above_chance(synthetic):
    result = fit(tiny_model(), synthetic, Recipe(epochs=4, batch_size=64, lr=0.2), eval_test=True)
    assert result.val_acc > 0.9 and result.test_acc > 0.9  # chance is 0.25
    assert [c["epoch"] for c in result.curve] == [1, 2, 3, 4]
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]
    assert result.images_per_s > 0 and result.seconds > 0 and result.peak_memory_bytes > 0
    # CPU time over the run: positive, and no more than its threads could spend in its wall time.
    assert 0 < result.cpu_seconds <= result.seconds * torch.get_num_threads() + 0.5


def test_same_seed_same_result_on_cpu(synthetic):
    recipe = Recipe(epochs=2, batch_size=64, seed=3)
    a = fit(tiny_model(1), synthetic, recipe)
    b = fit(tiny_model(1), synthetic, recipe)
    assert [c["loss"] for c in a.curve] == [c["loss"] for c in b.curve]
    assert a.val_acc == b.val_acc
    c = fit(tiny_model(1), synthetic, Recipe(epochs=2, batch_size=64, seed=4))
    assert [x["loss"] for x in c.curve] != [x["loss"] for x in a.curve]


def test_gpu_code_paths_run_on_cpu(synthetic):
    # bf16 autocast, channels_last and torch.compile in the mode CUDA trains with by default
    # (reduce-overhead: CUDA graphs there) are the GPU recipe; they must work here too.
    assert Recipe().compile_mode("cuda") == "reduce-overhead"
    recipe = Recipe(epochs=3, batch_size=64, lr=0.2, bf16=True, channels_last=True,
                    compile="reduce-overhead")
    result = fit(tiny_model(), synthetic, recipe)
    assert result.val_acc > 0.8
    assert result.compile_mode == "reduce-overhead" and not result.compile_note
    # Compilation is inside the measured seconds and reported as its own share.
    assert result.compile_seconds is not None and 0 < result.compile_seconds < result.seconds


def test_compile_modes_by_device_and_bad_values():
    assert Recipe().compile_mode("cpu") is None
    assert Recipe(compile=True).compile_mode("cpu") == "default"
    assert Recipe(compile=False).compile_mode("cuda") is None
    assert Recipe(compile="max-autotune").compile_mode("cpu") == "max-autotune"
    for bad in ("fast", 3, ["default"]):
        with pytest.raises(RecipeError, match="recipe.compile: must be true, false, or a mode"):
            Recipe(compile=bad)


def test_a_compiler_failure_falls_back_to_eager_and_keeps_the_run(synthetic, monkeypatch, capsys):
    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise RuntimeError("backend compiler failed\nlong traceback")

    recipe = Recipe(epochs=2, batch_size=64, lr=0.2, seed=3)
    eager = fit(tiny_model(5), synthetic, recipe)
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: Broken(model))
    result = fit(tiny_model(5), synthetic, dataclasses.replace(recipe, compile=True))
    assert result.compile_mode is None and result.compile_seconds is None
    assert result.compile_note == ("torch.compile (default) failed, trained eagerly: "
                                   "RuntimeError: backend compiler failed")
    assert "note: torch.compile (default) failed" in capsys.readouterr().err
    # The eager retry trains exactly what an eager run does: nothing of the failed step remains.
    assert [c["loss"] for c in result.curve] == [c["loss"] for c in eager.curve]
    assert result.val_acc == eager.val_acc


def test_execution_fields_may_change_when_a_study_resumes():
    from condconv_nas.store.settings import settings_differ

    stored = {"recipe": {"compile": False, "lr": 0.4}}
    assert settings_differ(stored, {"recipe": {"compile": None, "lr": 0.4}}) == []
    assert settings_differ(stored, {"recipe": {"compile": None, "lr": 0.2}}) == ["recipe.lr"]


class NaNAt(torch.nn.Module):
    """Wraps a model and returns NaN logits at one call: the loss goes non-finite there."""

    def __init__(self, model, call: int):
        super().__init__()
        self.model, self.call, self.calls = model, call, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls == self.call:
                return out * float("nan")
        return out


def test_non_finite_loss_names_epoch_and_step(synthetic):
    steps = len(synthetic.train) // 64
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3") as err:
        fit(NaNAt(tiny_model(), steps + 3), synthetic, Recipe(epochs=3, batch_size=64))
    assert (err.value.epoch, err.value.step) == (2, 3)


def test_on_epoch_stop(synthetic):
    seen = []

    def on_epoch(epoch, acc):
        seen.append((epoch, acc))
        return "stop" if epoch == 2 else None

    result = fit(tiny_model(), synthetic, Recipe(epochs=5, batch_size=64), on_epoch=on_epoch)
    assert result.epochs_run == 2 and result.stopped_early and len(seen) == 2
    assert result.curve[-1]["val_acc"] == seen[-1][1]


def test_batch_larger_than_split(synthetic):
    with pytest.raises(RecipeError, match="batch size 99999 is larger than the training split"):
        fit(tiny_model(), synthetic, Recipe(batch_size=99999))


def test_weight_decay_skips_bn_and_biases():
    model = tiny_model()
    decay, no_decay = _param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0
    named = dict(model.named_parameters())
    skipped = {n for n, p in named.items() if any(p is q for q in no_decay["params"])}
    assert skipped == {n for n in named if n.endswith("bias") or ".bn." in n}
    assert any(p.ndim == 5 for p in decay["params"])  # CondConv experts are decayed


def test_schedules_by_hand():
    cos = _lr_factor(Recipe(epochs=2, warmup_epochs=0.5, schedule="cosine"), 10)
    assert cos(0) == pytest.approx(1 / 6) and cos(4) == pytest.approx(5 / 6)
    assert cos(5) == pytest.approx(1.0) and cos(20) == pytest.approx(0.0, abs=1e-12)
    assert cos(12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 15)))
    one = _lr_factor(Recipe(epochs=2, warmup_epochs=0.5, schedule="onecycle"), 10)
    assert one(5) == pytest.approx(1.0) and one(12) == pytest.approx(1 - 7 / 15)
    # A 1-epoch run with the default 1-epoch warm-up: half warms up, half decays to zero.
    short = _lr_factor(Recipe(epochs=1, warmup_epochs=1.0, schedule="onecycle"), 10)
    assert short(4) == pytest.approx(5 / 6) and short(5) == pytest.approx(1.0)
    assert short(9) == pytest.approx(1 - 4 / 5)


@pytest.mark.parametrize("kw, field", [({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"),
                                       ({"schedule": "step"}, "schedule"),
                                       ({"batch_size": 2.5}, "batch_size"),
                                       ({"lr": float("nan")}, "lr")])
def test_recipe_validation(kw, field):
    with pytest.raises(RecipeError, match=f"recipe.{field}:"):
        Recipe(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu():
    with pytest.raises(RecipeError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


FMNIST = os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FMNIST and not os.environ.get("CONDCONV_NAS_REQUIRE_FMNIST"),
                    reason="dataset-fashion-mnist not installed (CI installs it)")
def test_fashion_mnist_one_epoch_on_5k_far_above_chance():
    from condconv_nas.nn.presets import get_preset

    data = load_dataset("fashion-mnist", train_limit=5000, val_size=2000)
    torch.manual_seed(0)
    model = build_model(get_preset("mobilenet_v2_proxy28"))
    result = fit(model, data, Recipe(epochs=1, batch_size=128, lr=0.1, warmup_epochs=0.3),
                 eval_test=True)
    assert result.test_acc > 0.6, result  # chance is 0.1


def test_default_batch_leaves_enough_steps_on_small_sets():
    # By hand: 256, or the largest power of two leaving 25 steps an epoch (at least 16).
    r = Recipe()
    assert [r.batch_for(n) for n in (55000, 4000, 1600, 400, 100, 10)] == [256, 128, 64, 16, 16, 10]
    assert Recipe(batch_size=256).batch_for(1600) == 256  # a batch the user set is kept
    assert few_steps_note(Recipe(batch_size=256), 1600).startswith("note: batch 256 leaves 6")
    assert few_steps_note(Recipe(), 1600) is None and few_steps_note(Recipe(batch_size=64), 1600) is None


def test_default_batch_learns_a_small_set_that_batch_256_does_not():
    # 500 training images: batch 256 gives 1 optimizer step an epoch; the default gives 31.
    data = load_dataset("synthetic", val_size=400, train_limit=500)
    small = fit(tiny_model(), data, Recipe(epochs=3, lr=0.2))
    large = fit(tiny_model(), data, Recipe(epochs=3, lr=0.2, batch_size=256))
    assert small.val_acc > large.val_acc + 0.15 and small.val_acc > 0.6
