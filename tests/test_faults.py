"""Faults against real components: worker processes on a journal file and on PostgreSQL, a worker
killed with SIGKILL mid-trial, a study interrupted with SIGINT and resumed. Each run must end with
exactly the requested trials, each trial told once, and nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from condconv_nas.search.config import load_study_config
from condconv_nas.search.study import open_study
from condconv_nas.store.optuna_internals import record_heartbeat
from condconv_nas.store.storage import counted, open_storage, stale_numbers
from tests.conftest import ROOT, defaults, finished

TRIALS = 6


def _pg_url() -> str:
    url = os.environ.get("CONDCONV_NAS_PG_URL", "")
    if not url:
        if os.environ.get("CONDCONV_NAS_REQUIRE_PG"):
            pytest.fail("CONDCONV_NAS_REQUIRE_PG is set but CONDCONV_NAS_PG_URL is not")
        pytest.skip("no PostgreSQL server (CI starts one: scripts/pg_test_server.sh)")
    return url


# Every fault test runs on both kinds of storage; the database runs (heartbeats) are `slow`: CI
# runs them after the default run (`make test-slow`).
@pytest.fixture(params=["journal", pytest.param("postgresql", marks=pytest.mark.slow)])
def storage_url(request, tmp_path) -> str:
    return str(tmp_path / "s.journal") if request.param == "journal" else _pg_url()


@pytest.fixture
def write_study(write_study, tmp_path):
    """write_study(storage): a 2-epoch study of TRIALS trials under a fresh name (studies of
    one test may share a storage), fast heartbeats."""
    return lambda storage: defaults(
        write_study, f"f{uuid.uuid4().hex[:8]}", train_limit=500,
        recipe={"epochs": 2, "batch_size": 64, "lr": 0.2}, trials=TRIALS, storage=storage,
        artifacts=str(tmp_path / "art"), heartbeat={"interval": 1, "grace": 4})()


def workers(path: Path, n: int) -> list[subprocess.Popen]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return [subprocess.Popen([sys.executable, "-m", "condconv_nas.cli", "worker", str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            for _ in range(n)]


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
    return outs


def _gave_up(t: optuna.trial.FrozenTrial) -> bool:
    """A claim that found the budget used after asking (databases only) and never trained."""
    return (t.user_attrs.get("fail_reason") == "claimed past the budget"
            and t.user_attrs.get("stale") is True and not t.user_attrs.get("curve"))


def check_study(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Exactly TRIALS counted trials, all complete with their attributes (or skipped: over budget
    or a repeat, PRUNED saying why); returns all trials."""
    kept = [t for t in trials if counted(t, stale_numbers(trials))]
    assert len(kept) == TRIALS, [(t.number, t.state.name, t.user_attrs.get("stale")) for t in trials]
    assert all(finished(t) for t in kept), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert len({t.number for t in trials}) == len(trials)  # each number once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in kept:
        assert {"spec", "madds", "params", "worker", "worker_started"} <= set(t.user_attrs)
        assert t.values or t.user_attrs["known_values"]
        if not t.user_attrs.get("infeasible") and "reused_from" not in t.user_attrs:
            assert t.user_attrs["curve"], t.number  # trained, its curve stored
            assert t.user_attrs["cpu_seconds"] > 0, t.number
    return trials


def test_three_workers_share_one_study(tmp_path, storage_url, write_study, stored_trials):
    path = write_study(storage_url)
    open_study(load_study_config(path), "search")
    outs = finish(workers(path, 3))
    trials = check_study(stored_trials(path))
    owners = {t.user_attrs["worker"] for t in trials}
    assert len(owners) >= 2, outs  # the work really was shared
    # Where claims hold no lock (databases other than PostgreSQL) a claim past the budget gives itself up
    # before it trains (workers._over_budget). Any other failure is a fault.
    assert not any(t.state == TrialState.FAIL and not _gave_up(t) for t in trials), [
        (t.number, t.user_attrs.get("fail_reason"), t.user_attrs.get("stale")) for t in trials
        if t.state == TrialState.FAIL]


def test_worker_killed_mid_trial_is_retried(tmp_path, storage_url, write_study, stored_trials):
    path = write_study(storage_url)
    cfg = load_study_config(path)
    study = open_study(cfg, "search")
    procs = workers(path, 3)
    victim = procs[0]
    deadline = time.time() + 120
    killed = None
    while time.time() < deadline and killed is None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and "spec" in t.user_attrs:
                time.sleep(0.5)  # well inside its training
                victim.send_signal(signal.SIGKILL)
                killed = t.number
                break
        time.sleep(0.2)
    assert killed is not None, "the victim never ran a trial"
    finish(procs[1:])
    victim.wait()
    trials = check_study(stored_trials(path))
    dead = trials[killed]
    assert dead.state == TrialState.FAIL and killed in stale_numbers(trials)
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params  # the same architecture, run again


def test_interrupted_study_resumes(tmp_path, storage_url, write_study, stored_trials):
    path = write_study(storage_url)
    cfg = load_study_config(path)
    study = open_study(cfg, "search")
    (proc,) = workers(path, 1)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if done >= 2 and running and "spec" in running[0].user_attrs:
            break
        time.sleep(0.2)
    else:  # say which wait ran out, so a slow machine is told from a broken resume
        proc.kill()
        pytest.fail(f"no third trial under way after 120 s ({done} complete, "
                    f"{len(running)} running)")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out, out
    before = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len(before) >= 2, [t.state for t in study.get_trials(deepcopy=False)]
    # Resume: the interrupted trial was queued again; finished ones are kept as they were.
    finish(workers(path, 1))
    trials = check_study(stored_trials(path))
    for t in before:
        assert trials[t.number].values == t.values, (t.number, trials[t.number].values, t.values)


def test_silent_heartbeat_on_another_machine_is_failed_and_retried(tmp_path, write_study):
    # A trial whose worker is on another host cannot be checked by process id: only its
    # heartbeat tells. Once silent past the grace period it is failed, marked stale, and queued.
    from condconv_nas.store.storage import reap_stale

    path = write_study(_pg_url())
    cfg = load_study_config(path)
    study = open_study(cfg, "search")
    study = optuna.load_study(study_name=cfg.name,
                              storage=open_storage(cfg.storage, heartbeat=(1, 2)))
    trial = study.ask({"s5_depth": optuna.distributions.IntDistribution(1, 2)})
    trial.set_user_attr("worker", "another-machine:4242")
    record_heartbeat(study, trial)
    assert reap_stale(study) == 0  # still within its grace period
    time.sleep(3.5)
    assert reap_stale(study) == 1
    trials = study.get_trials()
    dead = trials[trial.number]
    assert dead.state == TrialState.FAIL and trial.number in stale_numbers(trials)
    retry = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].user_attrs["retry_of"] == trial.number
    assert "heartbeat" in retry[0].user_attrs["retry_reason"]
    assert retry[0].user_attrs["worker"] == ""  # not the dead worker's any more
    assert retry[0].params == dead.params
    assert not counted(dead, stale_numbers(trials))  # the dead attempt does not use the budget


def test_killed_trial_goes_on_from_its_last_epoch(tmp_path):
    # One worker, so the only checkpoint is the victim's; three epochs leave time to kill it
    # after the first is saved. The retry must end exactly where an uninterrupted run of the
    # same architecture ends in a twin study.
    def one_trial_study(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "space": str(ROOT / "search_spaces" / "tiny.yaml"),
            "dataset": "synthetic", "train_limit": 1000,
            "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.2}, "trials": 1, "seed": 0,
            "storage": str(tmp_path / f"{name}.journal"), "artifacts": str(tmp_path / name),
            "heartbeat": {"interval": 1, "grace": 4}}))
        return path

    path, twin = one_trial_study("killed"), one_trial_study("twin")
    study = open_study(load_study_config(path), "search")
    (victim,) = workers(path, 1)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(checkpoints.glob("*.pt")):
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert list(checkpoints.glob("*.pt")), "no checkpoint was written"
    assert not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), "killed too late"
    finish(workers(path, 1))
    (retry,) = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    twin_study = open_study(load_study_config(twin), "search")
    twin_study.enqueue_trial(retry.params)
    finish(workers(twin, 1))
    (straight,) = twin_study.get_trials()
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["resumed_epochs"] >= 1
    assert retry.params == straight.params and retry.values == straight.values
    assert [c["loss"] for c in retry.user_attrs["curve"]] == [
        c["loss"] for c in straight.user_attrs["curve"]]
    assert not list(checkpoints.glob("*")), "the finished run's checkpoint was left behind"


@pytest.mark.slow
def test_workers_started_together_on_a_fresh_database_all_open_it():
    import sqlalchemy

    url = _pg_url()
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    fresh = url.rsplit("/", 1)[0] + f"/{name}"
    try:
        code = f"from condconv_nas.store.storage import open_storage; open_storage({fresh!r})"
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(6)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs  # each creates or finds the tables
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.slow
def test_claims_on_postgresql_hold_one_lock_across_connections():
    import threading

    from condconv_nas.store.storage import claim_lock

    url, times = _pg_url(), {}
    inside = threading.Event()

    def first() -> None:
        with claim_lock(url):
            times["a_in"] = time.monotonic()
            inside.set()
            time.sleep(1.0)
            times["a_out"] = time.monotonic()

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(30)
    with claim_lock(url):  # another connection, as another machine's worker has
        times["b_in"] = time.monotonic()
    a.join()
    assert times["b_in"] >= times["a_out"]  # waited for the first claim to end
    with claim_lock(url):  # released: taken again at once
        pass
