"""Multi-fidelity search: the rung and promotion rules against brute force and hand counts, and
whole studies on a journal file and on PostgreSQL, with a worker SIGKILLed mid-rung and a search
interrupted with Ctrl-C: no rung result lost, none counted twice."""

from __future__ import annotations

import math
import random
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

from condconv_nas.cli import main
from condconv_nas.search.config import StudyError, load_study_config
from condconv_nas.search.multifidelity import (
    MultiFidelity,
    crowding_distances,
    nondominated_ranks,
    promotion_order,
    to_promote,
)
from condconv_nas.search.study import open_study, run_search
from condconv_nas.search.workers import _promotions
from condconv_nas.store.storage import counted, open_storage, stale_numbers
from tests.conftest import ROOT, defaults, finished
from tests.test_faults import _gave_up, finish, storage_url, workers  # noqa: F401  (fixture)

TRIALS = 6
MF = {"min_epochs": 1, "max_epochs": 2, "eta": 2}


@pytest.mark.parametrize("low, high, eta, rungs", [(1, 9, 3, (1, 3, 9)), (1, 10, 3, (1, 3, 9, 10)),
                                                   (2, 8, 2, (2, 4, 8)), (1, 2, 4, (1, 2))])
def test_rungs_by_hand(low, high, eta, rungs):
    mf = MultiFidelity(low, high, eta)
    assert mf.rungs == rungs and mf.top == len(rungs) - 1


def test_nondominated_ranks_match_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.choice([0.5, 0.6, 0.7, 0.8]), rng.choice([1, 2, 3, 4])) for _ in range(12)]
        ranks = nondominated_ranks(pts)

        def dominated_by(i, among, pts=pts):
            return any(pts[j][0] >= pts[i][0] and pts[j][1] <= pts[i][1] and pts[j] != pts[i]
                       for j in among)
        # Brute force: peel fronts one by one.
        left, r = set(range(len(pts))), 0
        while left:
            front = {i for i in left if not dominated_by(i, left)}
            assert {i for i in range(len(pts)) if ranks[i] == r} == front
            left -= front
            r += 1


def test_crowding_distance_by_hand():
    # One front of four points on (accuracy, MAdds); MAdds on a log scale.
    pts = [(0.6, 1.0), (0.7, math.e), (0.8, math.e ** 3), (0.9, math.e ** 4)]
    d = crowding_distances(pts, [0, 1, 2, 3])
    assert d[0] == d[3] == math.inf
    # Point 1: accuracy gap (0.8-0.6)/0.3, log-MAdds gap (3-0)/4.
    assert d[1] == pytest.approx(0.2 / 0.3 + 3 / 4)
    assert d[2] == pytest.approx(0.2 / 0.3 + 3 / 4)


def test_promotion_order_front_first_then_spread():
    # Front 0: a, b, c (c is cheap and bad); d is dominated by b.
    pts = [(0.9, 8.0), (0.8, 4.0), (0.5, 1.0), (0.7, 5.0), (0.85, 6.0)]
    order = promotion_order(pts)
    assert set(order[:4]) == {0, 1, 2, 4} and order[4] == 3
    assert order[:2] == [0, 2]  # the ends of the front (infinite crowding) first


def test_to_promote_takes_the_top_third_highest_rung_first():
    mf = MultiFidelity(1, 9, 3)
    rung0 = [(n, 0.5 + 0.01 * n, 5.0) for n in range(7)]  # same MAdds: accuracy decides
    # floor(7/3) = 2 promotable: numbers 6 and 5.
    assert to_promote({0: rung0}, {}, mf) == (6, 0)
    assert to_promote({0: rung0}, {0: {6}}, mf) == (5, 0)
    assert to_promote({0: rung0}, {0: {6, 5}}, mf) is None
    # Rung 1 with 3 results: one promotable to the top, served before rung 0.
    rung1 = [(10, 0.7, 5.0), (11, 0.8, 5.0), (12, 0.6, 5.0)]
    assert to_promote({0: rung0, 1: rung1}, {0: {6}}, mf) == (11, 1)
    assert to_promote({0: rung0[:2]}, {}, mf) is None  # floor(2/3) = 0


def _run(number: int, arch: str, acc: float, rung: int = 0,
         promoted_from: int | None = None) -> optuna.trial.FrozenTrial:
    """A finished run as stored: its architecture, rung and accuracy (MAdds all equal)."""
    attrs = {"arch_key": arch, "rung": rung, "madds": 5}
    if promoted_from is not None:
        attrs["promoted_from"] = promoted_from
    t = optuna.trial.create_trial(state=TrialState.COMPLETE, values=[acc, 5.0], user_attrs=attrs)
    t.number = number
    return t


def test_an_architecture_trained_twice_at_a_rung_takes_one_promotion():
    mf = MultiFidelity(1, 9, 3)
    # a (best) trained twice at once by two workers, then b..f: 6 architectures, 7 runs.
    rung0 = [_run(0, "a", 0.9), _run(1, "a", 0.9)] + [
        _run(n, arch, 0.8 - 0.01 * n) for n, arch in zip(range(2, 7), "bcdef")]
    # The rule by hand: floor(6 / 3) = 2 architectures go up, a and then b (trial 2).
    assert to_promote(*_promotions(rung0), mf) == (0, 0)
    assert to_promote(*_promotions(rung0 + [_run(7, "a", 0.91, 1, 0)]), mf) == (2, 0)
    # An older study promoted the twin: that counts for a, so b goes up next, not a again.
    assert to_promote(*_promotions(rung0 + [_run(7, "a", 0.91, 1, 1)]), mf) == (2, 0)
    done = rung0 + [_run(7, "a", 0.91, 1, 1), _run(8, "b", 0.85, 1, 2)]
    assert to_promote(*_promotions(done), mf) is None


def mf_writer(write_study, tmp_path: Path):
    """write(storage, **keys): a multi-fidelity study (MF over TRIALS architectures, fast
    heartbeats) under a fresh name, since several studies may share one storage."""
    def write(storage: str, **keys) -> Path:
        return defaults(write_study, f"m{uuid.uuid4().hex[:8]}", train_limit=400,
                        recipe={"batch_size": 64, "lr": 0.2}, trials=TRIALS, storage=storage,
                        artifacts=str(tmp_path / "art"), heartbeat={"interval": 1, "grace": 4},
                        multifidelity=MF)(**keys)

    return write


@pytest.fixture
def write_study(write_study, tmp_path):
    """This module's studies (mf_writer)."""
    return mf_writer(write_study, tmp_path)


def check_rungs(path: Path, stored_trials) -> list[optuna.trial.FrozenTrial]:
    """TRIALS architectures at rung 0; every promotion once, finished, from a finished run of the
    rung below; nothing left to promote; each dead attempt queued again once at its rung."""
    cfg = load_study_config(path)
    trials = stored_trials(path)
    stale = stale_numbers(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    bottom = [t for t in trials if counted(t, stale)]
    assert len(bottom) == TRIALS and all(finished(t) for t in bottom), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in bottom]
    live = [t for t in trials if t.number not in stale and not t.user_attrs.get("stale")]
    promoted = [t for t in live if t.user_attrs.get("rung", 0) > 0]
    keys = [(t.user_attrs["rung"], t.user_attrs["promoted_from"]) for t in promoted]
    assert len(keys) == len(set(keys)), keys  # none counted twice
    by_number = {t.number: t for t in trials}
    for t in promoted:
        # An architecture trained twice at rung 0 at once is promoted once (its first run).
        assert t.state == TrialState.COMPLETE, (t.number, t.state.name,
                                                t.user_attrs.get("fail_reason"),
                                                t.user_attrs.get("skipped"))
        source = by_number[t.user_attrs["promoted_from"]]
        assert source.state == TrialState.COMPLETE and source.number not in stale
        assert source.user_attrs.get("rung", 0) == t.user_attrs["rung"] - 1
        assert source.params == t.params
        assert t.user_attrs["epochs"] == cfg.multifidelity.rungs[t.user_attrs["rung"]]
        assert t.user_attrs["epochs_run"] == t.user_attrs["epochs"]  # retrained in full
    assert to_promote(*_promotions(trials), cfg.multifidelity) is None  # none lost
    results, _ = _promotions(trials)
    assert len(promoted) >= len(results.get(0, [])) // MF["eta"]
    # A claim past the budget (databases without the claim lock) never ran: no retry.
    for dead in (t for t in trials if t.number in stale and not _gave_up(t)):
        retries = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
        assert len(retries) == 1 and retries[0].params == dead.params
        assert retries[0].user_attrs.get("rung", 0) == dead.user_attrs.get("rung", 0)
    return trials


def test_search_promotes_and_reports_the_top_rung_only(tmp_path, write_study, stored_trials):
    path = write_study(str(tmp_path / "s.journal"), workers=1)
    cfg = load_study_config(path)
    assert cfg.recipe.epochs == 2  # the top rung's, for baselines and confirmation
    lines: list[str] = []
    run_search(cfg, print_fn=lines.append)
    trials = check_rungs(path, stored_trials)
    assert any("rung 1 (2 ep, from #" in line for line in lines)
    from condconv_nas.analysis.results import load_results

    res = load_results(open_storage(cfg.storage), cfg.name)
    assert res.top_rung == 1 and set(res.finished.rung) == {1}
    assert len(res.finished) == sum(t.user_attrs.get("rung", 0) == 1
                                    and "reused_from" not in t.user_attrs for t in trials)
    rungs = res.rungs.set_index("rung")
    assert rungs.loc[0, "runs"] == TRIALS and rungs.loc[1, "epochs"] == 2
    # Weights are kept for top-rung front trials only, so export takes a top-rung trial.
    assert all(t.user_attrs.get("rung", 0) == 1 for t in trials if "weights_artifact" in t.user_attrs)
    out = tmp_path / "exp"
    assert main(["export", str(path), "-o", str(out)]) == 0
    exported = yaml.safe_load((out / "arch.json").read_text())
    assert exported["provenance"]["trial"] in set(res.finished.number)
    # A resumed search with nothing pending does nothing.
    again: list[str] = []
    assert run_search(cfg, print_fn=again.append) == {"ran": 0}


def test_worker_killed_mid_rung_is_retried_at_its_rung(tmp_path, storage_url,  # noqa: F811
                                                       write_study, stored_trials):
    path = write_study(storage_url, recipe={"batch_size": 32, "lr": 0.2})
    cfg = load_study_config(path)
    study = open_study(cfg, "search")
    procs = workers(path, 2)
    pids = {p.pid: p for p in procs}
    deadline, killed = time.time() + 180, None
    while time.time() < deadline and killed is None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = int(t.user_attrs.get("worker", "x:0").rpartition(":")[2] or 0)
            if t.user_attrs.get("rung", 0) > 0 and "spec" in t.user_attrs and pid in pids:
                time.sleep(0.3)  # inside its training
                pids[pid].send_signal(signal.SIGKILL)
                killed = t.number
                break
        time.sleep(0.1)
    assert killed is not None, "no promoted run was seen running"
    finish([p for p in procs if p.poll() is None])
    # The survivor may have finished before the kill was noticed: a new worker completes it.
    finish(workers(path, 1))
    trials = check_rungs(path, stored_trials)
    dead = trials[killed]
    assert dead.state == TrialState.FAIL and killed in stale_numbers(trials)
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed][0]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["promoted_from"] == dead.user_attrs["promoted_from"]


def test_search_interrupted_mid_rung_resumes(tmp_path, write_study, stored_trials):
    path = write_study(str(tmp_path / "s.journal"), workers=1,
                       recipe={"batch_size": 32, "lr": 0.2})
    cfg = load_study_config(path)
    cmd = [sys.executable, "-m", "condconv_nas.cli", "search", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    open_storage(cfg.storage)
    deadline, running = time.time() + 180, None
    while time.time() < deadline and running is None and proc.poll() is None:
        try:
            study = optuna.load_study(study_name=cfg.name, storage=open_storage(cfg.storage))
        except KeyError:
            time.sleep(0.2)
            continue
        running = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                        if t.user_attrs.get("rung", 0) > 0 and "spec" in t.user_attrs), None)
        time.sleep(0.1)
    assert running is not None, "no promoted run was seen running"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    before = {t.number: t.values for t in study.get_trials(deepcopy=False)
              if t.state == TrialState.COMPLETE}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = check_rungs(path, stored_trials)
    assert all(trials[n].values == v for n, v in before.items())  # kept as they were
    interrupted = trials[running.number]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["stale"]


def test_promotions_on_sqlite_too(tmp_path, write_study, stored_trials):
    path = write_study(f"sqlite:///{tmp_path / 's.db'}", workers=1, trials=4)
    global TRIALS
    saved, TRIALS = TRIALS, 4
    try:
        run_search(load_study_config(path), print_fn=lambda s: None)
        trials = check_rungs(path, stored_trials)
    finally:
        TRIALS = saved
    assert any(t.user_attrs.get("rung", 0) == 1 for t in trials)


@pytest.mark.parametrize("mf, needle", [
    ("multifidelity: 3", "multifidelity: must be a mapping"),
    ("multifidelity: {min_epochs: 1}", "multifidelity: must be a mapping"),
    ("multifidelity: {max_epochs: 1}", "max_epochs: must exceed min_epochs"),
    ("multifidelity: {max_epochs: 9, eta: 1}", "multifidelity.eta: must be an integer >= 2"),
    ("multifidelity: {max_epochs: 9, min_epochs: 0}", "min_epochs: must be an integer >= 1"),
    ("multifidelity: {max_epochs: 9, rungs: 3}", "multifidelity: must be a mapping"),
    ("multifidelity: {max_epochs: 9}\npruner: {k: 2}", "pruner: cannot be combined"),
    ("multifidelity: {max_epochs: 9}\nrecipe: {epochs: 4}", "recipe.epochs: must equal"),
])
def test_bad_multifidelity_is_one_line_exit_2(tmp_path, capsys, mf, needle):
    path = tmp_path / "b.yaml"
    path.write_text(f"name: b\nspace: {ROOT / 'search_spaces' / 'tiny.yaml'}\n"
                    f"dataset: synthetic\ntrials: 2\n{mf}\n")
    with pytest.raises(StudyError, match=needle.replace("(", r"\(")):
        load_study_config(path)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.yaml"]  # nothing created


def test_multifidelity_is_a_result_setting(tmp_path, capsys, write_study):
    # A plain study resumed as a multi-fidelity one would mix runs of other budgets.
    path = write_study(str(tmp_path / "s.journal"), workers=1, trials=1)
    data = yaml.safe_load(path.read_text())
    plain = dict(data)
    plain.pop("multifidelity")
    plain["recipe"] = {**data["recipe"], "epochs": 2}
    path.write_text(yaml.safe_dump(plain))
    run_search(load_study_config(path), print_fn=lambda s: None)
    path.write_text(yaml.safe_dump({**data, "trials": 2}))
    assert main(["search", str(path)]) == 2
    assert "multifidelity" in capsys.readouterr().err
