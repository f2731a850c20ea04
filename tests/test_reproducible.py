"""A study is a function of its file, seed and worker count: the same trials under any timing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from condconv_nas.search.reproducible import ReproducibleSampler, next_slot, slot_trials
from condconv_nas.search.samplers import make_sampler
from condconv_nas.store.order import SearchOrder, stored_order
from condconv_nas.store.record import TrialRecord
from condconv_nas.store.storage import open_storage
from tests.conftest import defaults


def _simulated_search(sampler: str, lag: int, finish_order: random.Random, trials: int = 14,
                      plain: bool = False) -> list[tuple[dict, tuple]]:
    """Slots sampled in order, told in a shuffled order that respects the lag; (params, values).

    `plain`: the sampler itself, reading whatever has finished (what the order replaces)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.sampler = (make_sampler(sampler, 3, trials) if plain else
                     ReproducibleSampler(lambda s: make_sampler(sampler, s, trials), seed=3))
    running: list[optuna.Trial] = []
    out: dict[int, tuple[dict, tuple]] = {}
    for slot in range(trials):
        # Finish running trials at random until the slot's view is complete.
        while (seen := slot_trials(study.get_trials(deepcopy=False), slot - lag)) is None \
                or (running and finish_order.random() < 0.3):
            t = running.pop(finish_order.randrange(len(running)))
            x, y = t.params["x"], t.params["y"]
            study.tell(t, [-(x - 0.3) ** 2 - (y - 2) ** 2 * 0.01, x + y])
        if not plain:
            study.sampler.bind_slot(study, slot, seen)
        t = study.ask()
        t.set_user_attr("slot", slot)
        t.suggest_float("x", 0.0, 1.0)
        t.suggest_int("y", 0, 5)
        out[slot] = (dict(t.params), ())
        running.append(t)
    for t in running:
        study.tell(t, [0.0, 0.0])
    return [out[s] for s in range(trials)]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_every_sampler_samples_the_same_trials_whatever_finishes_first(sampler):
    # Two very different completion orders (lag 2, as two workers): the same samples. Without
    # the slot's view (plain samplers reading every finished trial) they would differ.
    a = _simulated_search(sampler, 2, random.Random(1))
    b = _simulated_search(sampler, 2, random.Random(99))
    assert a == b
    assert len({repr(p) for p, _ in a}) > 5  # a search, not one sample repeated
    if sampler == "tpe":  # the same two orders move plain TPE: the check can fail
        assert (_simulated_search(sampler, 2, random.Random(1), plain=True)
                != _simulated_search(sampler, 2, random.Random(99), plain=True))


def test_a_slot_sees_the_final_attempt_of_every_earlier_slot_and_waits_for_unfinished_ones():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for slot, state, stale in [(0, TrialState.COMPLETE, False), (1, TrialState.FAIL, True),
                               (2, TrialState.COMPLETE, False)]:
        t = study.ask()
        t.set_user_attr("slot", slot)
        if stale:
            t.set_user_attr("stale", True)
        study.tell(t, [0.5, 1.0] if state == TrialState.COMPLETE else None, state=state)
    trials = study.get_trials(deepcopy=False)
    assert next_slot(trials) == 3
    assert [TrialRecord.of(t.user_attrs).slot for t in slot_trials(trials, 0)] == [0]
    assert slot_trials(trials, 1) is None  # slot 1's only attempt is dead: its retry is to come
    retry = study.ask()
    retry.set_user_attr("slot", 1)
    assert slot_trials(study.get_trials(deepcopy=False), 2) is None  # the retry still runs
    study.tell(retry, [0.6, 1.0])
    seen = slot_trials(study.get_trials(deepcopy=False), 2)
    assert [t.number for t in seen] == [0, 3, 2]  # by slot; the dead attempt left out
    assert slot_trials(trials, -1) == []


@pytest.fixture
def write_study(write_study):
    """This module's study `r` (in a folder of its own: write_study(folder=...)): 8 trials on
    200 images, 2 workers."""
    return defaults(write_study, "r", train_limit=200, val_size=100, trials=8, workers=2)


def _env() -> dict[str, str]:
    # One thread a worker in every run: thread counts change float rounding on CPU.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _cli(*args: str) -> subprocess.Popen:
    # Its own process group, as a terminal's job: Ctrl-C (killpg SIGINT) reaches its workers.
    def own_group() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "condconv_nas.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), preexec_fn=own_group)


def _create(path: Path) -> None:
    """The study as `search` creates it (its order stored), without running a trial."""
    from condconv_nas.search.config import load_study_config
    from condconv_nas.search.reproducible import settle_order
    from condconv_nas.search.study import open_study

    cfg = load_study_config(path)
    settle_order(open_study(cfg, "search"), cfg.reproducible, cfg.workers, cfg.storage)


def _by_slot(trials: list[optuna.trial.FrozenTrial]) -> dict[int, tuple]:
    """Each slot's final attempt: state, parameters, values and what it was (rung, promotion)."""
    slot = {t.number: TrialRecord.of(t.user_attrs).slot for t in trials}
    out = {}
    for t in trials:
        r = TrialRecord.of(t.user_attrs)
        if not r.stale:  # trials named by number are named by slot: retries renumber
            out[r.slot] = (t.state.name, t.params, t.values, r.rung, slot.get(r.promoted_from),
                           slot.get(r.reused_from), r.infeasible)
    return out


def _signature(trials: list[optuna.trial.FrozenTrial]) -> list[tuple]:
    return [(t.number, t.state.name, t.params, t.values, t.user_attrs.get("slot")) for t in trials]


def _wait_for(path: Path, complete: int, proc: subprocess.Popen, stored_trials,
              limit: float = 120) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if (path.parent / "r.journal").exists() and sum(
                t.state == TrialState.COMPLETE for t in stored_trials(path)) >= complete:
            return
        if proc.poll() is not None:
            pytest.fail(f"worker ended early: {proc.communicate()[0]}")
        time.sleep(0.2)
    pytest.fail(f"fewer than {complete} trials complete after {limit} s")


def _finish(*procs: subprocess.Popen) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0 and "Traceback" not in out, out


MULTIFIDELITY = {"multifidelity": {"min_epochs": 1, "max_epochs": 3, "eta": 3}, "trials": 6,
                 "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.2}}


@pytest.mark.parametrize("extra", [{}, MULTIFIDELITY], ids=["single-fidelity", "multi-fidelity"])
def test_same_file_same_trials_under_delay_join_and_interruption(tmp_path, extra, write_study, stored_trials):
    # The reference: `search` with its two workers, undisturbed.
    ref = write_study(folder=tmp_path / "ref", **extra)
    _finish(_cli("search", str(ref)))
    expected = stored_trials(ref)
    assert stored_order(optuna.load_study(study_name="r", storage=open_storage(
        str(ref.parent / "r.journal")))).reproducible
    assert sum(t.state == TrialState.COMPLETE for t in expected) >= 6
    if extra:  # the multi-fidelity run promoted something, so promotions are compared too
        assert any(TrialRecord.of(t.user_attrs).rung > 0 for t in expected)

    # A worker stopped for seconds mid-run (SIGSTOP): the other runs ahead, finishing order
    # changes; the stored trials do not, numbers included.
    delayed = write_study(folder=tmp_path / "delayed", **extra)
    _create(delayed)
    a, b = _cli("worker", str(delayed), "--workers", "1"), _cli("worker", str(delayed),
                                                                  "--workers", "1")
    _wait_for(delayed, 2, a, stored_trials)
    os.kill(a.pid, signal.SIGSTOP)
    time.sleep(4)
    os.kill(a.pid, signal.SIGCONT)
    _finish(a, b)
    assert _signature(stored_trials(delayed)) == _signature(expected)
    if extra:
        return  # promotions are the multi-fidelity case's point; joins and resumes are shared

    # One worker, then a second joining halfway: the same trials.
    joined = write_study(folder=tmp_path / "joined", **extra)
    _create(joined)
    a = _cli("worker", str(joined), "--workers", "1")
    _wait_for(joined, 3, a, stored_trials)
    b = _cli("worker", str(joined), "--workers", "1")
    _finish(a, b)
    assert _signature(stored_trials(joined)) == _signature(expected)

    # Ctrl-C mid-trial, then resumed: the interrupted slots run again (as new trial numbers,
    # their dead attempts kept as stale); every slot ends as in the reference.
    cut = write_study(folder=tmp_path / "cut", **extra)
    p = _cli("search", str(cut))
    _wait_for(cut, 2, p, stored_trials)
    os.killpg(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    _finish(_cli("search", str(cut)))
    assert _by_slot(stored_trials(cut)) == _by_slot(expected)


def test_opting_out_is_recorded_and_a_study_keeps_its_order(tmp_path, capsys, write_study):
    from condconv_nas.search.config import load_study_config
    from condconv_nas.search.reproducible import settle_order
    from condconv_nas.search.study import open_study

    cfg = load_study_config(write_study(reproducible=False))
    study = open_study(cfg, "search")
    order = settle_order(study, cfg.reproducible, cfg.workers, cfg.storage)
    assert not order.reproducible
    assert study.user_attrs["search_order"] == {"reproducible": False, "lag": 4}
    # Asking for a reproducible run of a study that began without: it goes on as it began.
    again = settle_order(study, True, 2, cfg.storage)
    assert not again.reproducible and "goes on as it began" in capsys.readouterr().out
    assert "not reproducible" in again.describe()
    assert SearchOrder(False, legacy=True).describe().startswith("not run reproducibly")


def test_a_reproducible_search_refuses_a_storage_without_claim_locks(tmp_path):
    from condconv_nas.errors import UserError
    from condconv_nas.search.reproducible import settle_order

    study = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.raises(UserError, match="reproducible: false"):
        settle_order(study, True, 2, "mysql://u@h/db")
