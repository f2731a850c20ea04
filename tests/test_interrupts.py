"""A Ctrl-C that Python swallows (raised inside a finalizer) still stops training and claiming."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import optuna
import pytest

from condconv_nas.search.config import load_study_config
from condconv_nas.search.workers import _claim
from condconv_nas.store.storage import open_storage
from condconv_nas.train.data import load_dataset
from condconv_nas.train.interrupts import check_interrupt, deferred_interrupt, stop_on_signals
from condconv_nas.train.train import Recipe, fit
from tests.conftest import defaults

from .test_study import STUDY
from .test_train import tiny_model


class _Finalizer:
    """Delivers Ctrl-C from inside __del__, as garbage collection of SQLAlchemy objects can."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


@pytest.fixture(autouse=True)
def _heeded(ctrl_c_heeded):
    yield


@pytest.fixture
def swallow(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Swallow one Ctrl-C as Python does: reported to sys.unraisablehook ("Exception ignored")."""
    ignored: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(u.exc_type))

    def run() -> None:
        _Finalizer()  # collected at once: its KeyboardInterrupt is ignored and the caller goes on
        assert ignored.pop() is KeyboardInterrupt  # it really was swallowed

    return run


@pytest.fixture
def write_study(write_study):
    """test_study's studies."""
    return defaults(write_study, "t", **STUDY)


def test_a_swallowed_ctrl_c_is_raised_again_until_the_block_ends(swallow):
    with stop_on_signals():
        check_interrupt()  # nothing requested yet
        swallow()
        for _ in range(2):  # it sticks: every later check stops
            with pytest.raises(KeyboardInterrupt):
                check_interrupt()
    check_interrupt()  # the request belonged to the block
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_the_handler_python_loses_it(swallow):
    # The failure the module exists for: Python's own handler leaves no trace once swallowed.
    swallow()
    check_interrupt()


def test_an_ignored_ctrl_c_stays_ignored():
    # A background job (`cmd &` in a script) is started with SIGINT ignored: Ctrl-C in the
    # terminal must not stop it, in a claim or out of one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
        check_interrupt()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_request_held_back_by_a_claim_sticks_too():
    with stop_on_signals():
        with pytest.raises(KeyboardInterrupt), deferred_interrupt():
            signal.raise_signal(signal.SIGINT)  # held until the block ends, then raised
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()


def test_training_stops_at_the_next_step(swallow):
    data = load_dataset("synthetic", val_size=400)
    epochs: list[int] = []

    def on_epoch(epoch: int, acc: float) -> None:
        epochs.append(epoch)
        if epoch == 1:
            swallow()

    with stop_on_signals(), pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), data, Recipe(epochs=3, batch_size=64), on_epoch=on_epoch)
    assert epochs == [1]  # without the check fit would have run all 3 epochs


def test_a_worker_claims_nothing_after_one(tmp_path, swallow, write_study):
    cfg = load_study_config(write_study(trials=3))
    study = optuna.create_study(study_name="t", storage=open_storage(cfg.storage),
                                directions=["maximize", "minimize"])
    with stop_on_signals():
        swallow()
        with pytest.raises(KeyboardInterrupt):
            _claim(study, cfg, "me:1")
    assert study.get_trials() == []
