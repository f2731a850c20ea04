"""Shared fixtures: deterministic torch on CPU; Ctrl-C heeded as in a terminal; the one writer of
study files (`write_study`, which a module may override to give its own defaults) and the one
reader of their stored trials (`stored_trials`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent  # the checkout: studies/, search_spaces/, docs/

# Paths by the fitted rule, not by timing, so that every run of a test computes the same thing
# (tests of the tuner turn it on for themselves); subprocesses inherit this.
os.environ.setdefault("CONDCONV_NAS_PATH_TUNING", "0")

# Tests train tiny models, which run fastest on one thread; under pytest-xdist that also leaves
# every other core to the parallel tests (set before torch is imported; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture
def ctrl_c_heeded():
    """Python's own Ctrl-C handler, whatever this process inherited (a background job ignores it)."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


# The keys every test study starts from: the tiny space, synthetic data, a one-epoch recipe.
TINY_STUDY = {"space": str(ROOT / "search_spaces" / "tiny.yaml"), "dataset": "synthetic",
              "seed": 0, "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}}


def study_file(folder: Path, name: str = "t", **keys) -> Path:
    """A study file `name.yaml` in `folder` on the tiny space and synthetic data, with `keys`
    added or replaced (what the `write_study` fixture writes; module-scoped fixtures call it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **TINY_STUDY, **keys}))
    return path


@pytest.fixture
def write_study(tmp_path):
    """write_study(name="t", folder=tmp_path, **keys): `study_file` in the test's folder."""
    def write(name: str = "t", folder: Path | None = None, **keys) -> Path:
        return study_file(tmp_path if folder is None else folder, name, **keys)

    return write


def defaults(write, name: str = "t", **keys):
    """`write_study` with a module's own name and keys as defaults (a call's keys win), for a
    module's override of the fixture: `return defaults(write_study, "c", trials=2)`."""
    def write_with(**given) -> Path:
        given = {**keys, **given}
        return write(given.pop("name", name), **given)

    return write_with


@pytest.fixture
def stored_trials():
    """stored_trials(path, study=None, states=None): the trials of the study file's storage (its
    own study, or the sibling named `study`), oldest first."""
    def load(path: Path, study: str | None = None, states=None) -> list:
        import optuna

        from condconv_nas.search.config import load_study_config
        from condconv_nas.store.storage import open_storage

        cfg = load_study_config(path)
        found = optuna.load_study(study_name=study or cfg.name,
                                  storage=open_storage(cfg.storage, create=False))
        return found.get_trials(states=states)

    return load


def finished(t) -> bool:
    """Whether a search trial ended as it should: trained (COMPLETE), or skipped (PRUNED with the
    reason: over budget, or an architecture already trained, which two workers may sample)."""
    from optuna.trial import TrialState

    from condconv_nas.store.record import TrialRecord

    return t.state == TrialState.COMPLETE or (
        t.state == TrialState.PRUNED and bool(TrialRecord.of(t.user_attrs).skipped))
