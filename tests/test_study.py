"""Studies end to end on synthetic data: budget, resume, constraints, reuse, failures, workers."""

from __future__ import annotations

import os
import socket

import optuna
import pytest
from optuna.trial import TrialState

from condconv_nas.errors import UserError
from condconv_nas.search.config import PrunerConfig, StudyError, baseline_study_config, load_study_config
from condconv_nas.search.objective import should_prune
from condconv_nas.search.space import SpaceError
from condconv_nas.search.study import run_baselines, run_search
from condconv_nas.store.attrs import whole
from condconv_nas.store.storage import StorageError, open_storage, reap_stale
from tests.conftest import ROOT, defaults, finished

STUDY = {"trials": 3, "train_limit": 500}  # this module's study keys (test_interrupts too)


@pytest.fixture
def write_study(write_study):
    """This module's studies: 3 trials on 500 images (what these tests check needs runs, not
    accuracy)."""
    return defaults(write_study, "t", **STUDY)


def load(path) -> optuna.Study:
    cfg = load_study_config(path)
    return optuna.load_study(study_name=cfg.name, storage=open_storage(cfg.storage))


def test_search_resumes_to_the_total_and_never_past(tmp_path, write_study):
    path = write_study(trials=2)
    lines = []
    run_search(load_study_config(path), print_fn=lines.append)
    assert len(load(path).trials) == 2 and sum(line.startswith("trial") for line in lines) == 2
    run_search(load_study_config(path), print_fn=lines.append)  # already done: nothing
    assert len(load(path).trials) == 2
    path = write_study(trials=4)
    run_search(load_study_config(path), print_fn=lines.append)
    study = load(path)
    # Trained (COMPLETE), or skipped as a repeat of an architecture already trained (PRUNED).
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE or (
        t.state == TrialState.PRUNED and "reused_from" in t.user_attrs) for t in study.trials)
    t = study.trials[0]
    assert {"spec", "madds", "params", "curve", "seconds", "images_per_s", "versions",
            "device"} <= set(t.user_attrs)
    assert t.values[1] == t.user_attrs["madds"]


def test_over_budget_is_infeasible_and_untrained(tmp_path, write_study):
    budget = 1_500_000  # the tiny space spans 1.15M to 2.28M MAdds on synthetic data
    path = write_study(budget_madds=budget, trials=6)
    lines: list[str] = []
    run_search(load_study_config(path), print_fn=lines.append)
    assert "budget are counted as trials, not trained" in lines[1]
    over = 0
    for t in load(path).trials:
        madds = t.user_attrs["madds"]
        # Over budget: PRUNED with its reason, so Optuna's tools do not count it as trained.
        assert (t.state == TrialState.PRUNED) == (madds > budget) or "reused_from" in t.user_attrs
        assert t.user_attrs.get("infeasible", False) == (madds > budget)
        assert ("curve" in t.user_attrs) == (madds <= budget)  # over budget: never trained
        constraint = [v for k, v in t.system_attrs.items() if k.startswith("constraints")]
        assert constraint == [madds - budget]  # Optuna's feasibility record
        over += madds > budget
    assert over > 0


def test_same_architecture_is_not_trained_twice(tmp_path, write_study):
    path = write_study(trials=2)
    cfg = load_study_config(path)
    study = optuna.create_study(study_name="t", storage=open_storage(cfg.storage),
                                directions=["maximize", "minimize"])
    params = {"s5_depth": 1, "s5_b1_experts": 2, "s6_width": 1.0, "s6_b1_experts": 0,
              "s6_b2_experts": 4}
    study.enqueue_trial(params)
    study.enqueue_trial(params)
    run_search(cfg, print_fn=lambda s: None)
    a, b = load(path).trials
    assert b.user_attrs["reused_from"] == a.number and b.user_attrs["known_values"] == a.values
    # Stored PRUNED, so Optuna's tools count the architecture once; the report too.
    assert (a.state, b.state) == (TrialState.COMPLETE, TrialState.PRUNED) and b.values is None
    assert "curve" in b.user_attrs and "seconds" in b.user_attrs  # its original's result


def test_stale_running_trial_is_failed_and_queued_once(tmp_path, write_study):
    path = write_study(trials=2)
    cfg = load_study_config(path)
    study = optuna.create_study(study_name="t", storage=open_storage(cfg.storage),
                                directions=["maximize", "minimize"])
    dead = study.ask({"s5_depth": optuna.distributions.IntDistribution(1, 2)})
    dead.set_user_attr("worker", f"{socket.gethostname()}:{2**22 + 12345}")  # no such pid
    lines = []
    run_search(cfg, print_fn=lines.append)
    trials = load(path).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["stale"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params["s5_depth"] == dead.params["s5_depth"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert "queued again" in lines[0]


def test_a_live_pid_of_another_process_is_not_the_trials_worker(tmp_path):
    """A journal carried over a restart: the pid its worker had now belongs to another process."""
    import subprocess
    import sys
    import time

    from condconv_nas.store.storage import process_start

    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    time.sleep(0.05)  # start times are in clock ticks: the child starts at a later one
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine, theirs = process_start(os.getpid()), process_start(other.pid)
        assert mine.startswith(boot + ":") and theirs.startswith(boot + ":") and mine != theirs
        assert process_start(other.pid) == theirs and process_start(2**22 + 12345) == ""
        study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")),
                                    directions=["maximize", "minimize"])
        host = socket.gethostname()
        for started in (theirs, mine, ""):  # its own start; another's; none stored (older journals)
            t = study.ask({"x": optuna.distributions.IntDistribution(1, 2)})
            t.set_user_attr("worker", f"{host}:{other.pid}")
            if started:
                t.set_user_attr("worker_started", started)
        assert reap_stale(study) == 1
        states = [t.state for t in study.trials]
        assert states[:3] == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING]
        assert study.trials[3].user_attrs["retry_of"] == 1  # queued again, once
    finally:
        other.kill()


def test_failing_trial_keeps_its_reason_and_the_study_goes_on(tmp_path, monkeypatch, write_study):
    import condconv_nas.train.train as train

    errors = iter([train.NonFiniteLossError(1, 3), RuntimeError("CUDA out of memory")])

    def failing_fit(*args, **kwargs):
        raise next(errors)

    monkeypatch.setattr(train, "fit", failing_fit)
    path = write_study(trials=2)
    run_search(load_study_config(path), print_fn=lambda s: None)
    trials = load(path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "non-finite loss at epoch 1, step 3" in trials[0].user_attrs["fail_reason"]
    assert "out of memory" in trials[1].user_attrs["fail_reason"]


def test_pruner_counts_cheaper_trials_that_were_better(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, madds in ((0.8, 10), (0.7, 10), (0.9, 50)):
        study.add_trial(optuna.trial.create_trial(
            values=[acc, madds], user_attrs={"madds": madds, "curve": [
                {"epoch": 1, "val_acc": acc - 0.1}, {"epoch": 2, "val_acc": acc}]}))
    cfg = PrunerConfig(k=2, warmup_epochs=1)
    assert should_prune(study, 20, 2, 0.65, cfg)       # two cheaper trials were better
    assert not should_prune(study, 20, 2, 0.75, cfg)   # only one was
    assert not should_prune(study, 5, 2, 0.1, cfg)     # none is as cheap
    assert not should_prune(study, 20, 1, 0.0, cfg)    # still warming up


def test_pruned_trial_is_recorded_with_its_curve(tmp_path, write_study):
    path = write_study(trials=3, pruner={"k": 1, "warmup_epochs": 0},
                       recipe={"epochs": 2, "batch_size": 64, "lr": 0.2})
    # A witness cheaper and better than anything the space can train: every trial that follows
    # has a cheaper-or-equal trial with a higher accuracy at epoch 1, so k=1 prunes it there.
    cfg = load_study_config(path)
    study = optuna.create_study(study_name=cfg.name, storage=open_storage(cfg.storage),
                                directions=["maximize", "minimize"])
    curve = [{"epoch": 1, "val_acc": 1.0}, {"epoch": 2, "val_acc": 1.0}]
    study.add_trial(optuna.trial.create_trial(values=[1.0, 1.0], user_attrs={
        "madds": 1, "curve": curve}))
    run_search(cfg, print_fn=lambda s: None)
    trials = load(path).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 3 and len(pruned) == 2
    for t in pruned:
        assert len(t.user_attrs["curve"]) == 1 and t.user_attrs["epochs_run"] == 1


@pytest.mark.slow
def test_two_worker_processes_share_the_study(tmp_path, write_study):
    path = write_study(trials=4, workers=2)
    run_search(load_study_config(path), print_fn=lambda s: None)
    trials = load(path).trials
    assert len(trials) == 4 and all(finished(t) for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len({t.number for t in trials}) == 4


@pytest.mark.parametrize("change, needle", [
    ({"sampler": "grid"}, "sampler: must be one of"),
    ({"trials": 0}, "trials: must be an integer >= 1"),
    ({"colour": 1}, "colour: unknown key"),
    ({"recipe": {"epochz": 1}}, "recipe.epochz: unknown key"),
    ({"recipe": {"epochs": -1}}, "recipe.epochs"),
    ({"space": "nowhere.yaml"}, "cannot read"),
    ({"budget_madds": -3}, "budget_madds"),
    ({"name": "a b"}, "name: must be"),
    ({"pruner": {"k": 0}}, "pruner.k"),
    ({"holdout": "val"}, "holdout: must be carve"),
    ({"holdout_size": 0}, "holdout_size: must be an integer >= 1"),
    ({"holdout": "test", "holdout_size": 100}, "holdout_size: the test split is used whole"),
])
def test_study_file_errors(tmp_path, change, needle, write_study):
    with pytest.raises(UserError) as err:  # a StudyError, or the space file's own SpaceError
        load_study_config(write_study(**change))
    assert isinstance(err.value, (StudyError, SpaceError))
    assert needle in str(err.value)


def test_bad_storage_creates_nothing(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(str(tmp_path / "missing" / "x.journal"))
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/missing/x.db")
    with pytest.raises(StorageError, match="cannot be opened"):
        open_storage("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StorageError, match="cannot be opened"):
        open_storage("nosuchdb://x")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_file_loads(path):
    cfg = load_study_config(path)
    assert cfg.trials >= 1 and cfg.budget_madds > 0
    assert cfg.storage.endswith(f"{cfg.name}.journal")


def test_split_once_tpe_samples_what_plain_tpe_samples():
    # The reference is Optuna's own TPE with the same seed on the conditional quickstart space.
    from condconv_nas.search.samplers import SplitOnceTPESampler
    from condconv_nas.search.space import load_space

    space = load_space(ROOT / "search_spaces" / "fmnist_mbv2.yaml")
    kw = {"multivariate": True, "group": True, "seed": 3, "n_startup_trials": 5}

    def run(sampler) -> list[dict]:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        for i in range(30):
            trial = study.ask()
            spec = space.sample(trial)
            trial.set_constraint("over", float(i % 5 == 0))  # some infeasible trials too
            study.tell(trial, [sum(s.repeats * (1 + i % 3) for s in spec.stages) / 100, i % 7])
        return [t.params for t in study.trials]

    plain = run(optuna.samplers.TPESampler(**kw))
    assert run(SplitOnceTPESampler(**kw)) == plain
    assert len({str(p) for p in plain}) > 10  # TPE really sampled a conditional, varied space


def test_baselines_are_tagged_seeded_shared_and_resumable(tmp_path, write_study):
    from condconv_nas.search.baselines import baseline_grid

    path = write_study(recipe={"epochs": 1, "batch_size": 64, "lr": 0.2}, train_limit=600,
                       baselines={"families": ["width", "experts"], "points": 1, "seeds": 2})
    cfg = load_study_config(path)
    lines: list[str] = []
    run_baselines(cfg, print_fn=lines.append)
    storage = open_storage(cfg.storage)
    study = optuna.load_study(study_name="t.baseline", storage=storage)
    trials = study.trials
    grid = baseline_grid(cfg.space, ("width", "experts"), 1,
                         adapt=lambda s: s.for_input(1, 16, 4))  # synthetic: 1x16x16, 4 classes
    assert len(trials) == 2 * len(grid) and all(t.state == TrialState.COMPLETE for t in trials)
    by_point = {(t.user_attrs["baseline_label"], t.user_attrs["seed"]): t for t in trials}
    assert set(by_point) == {(p.label, s) for p in grid for s in (0, 1)}
    for p in grid:
        t = by_point[(p.label, 0)]
        assert t.user_attrs["family"] == p.family and t.user_attrs["multiplier"] == p.multiplier
        assert t.values[1] == p.madds
    # The base is one network under both families: trained once per seed, reused by the other.
    for seed in (0, 1):
        a, b = by_point[("width x1", seed)], by_point[("experts 1", seed)]
        assert {a.user_attrs.get("reused_from"), b.user_attrs.get("reused_from")} & {
            a.number, b.number}
    # Seeds are distinct runs: seed 1 was trained, not reused from seed 0.
    assert "reused_from" not in by_point[("experts 4", 1)].user_attrs
    assert by_point[("experts 4", 1)].user_attrs["curve"] != by_point[("experts 4", 0)].user_attrs[
        "curve"]
    # Re-running queues nothing and trains nothing.
    run_baselines(cfg, print_fn=lines.append)
    assert len(optuna.load_study(study_name="t.baseline", storage=storage).trials) == len(trials)
    assert "nothing to do" in lines[-1]


def test_requeued_baseline_keeps_its_point(tmp_path, write_study):
    cfg = baseline_study_config(load_study_config(write_study()))
    study = optuna.create_study(study_name=cfg.name, storage=open_storage(cfg.storage),
                                directions=["maximize", "minimize"])
    point = {"baseline_spec": {"x": 1}, "family": "width", "multiplier": 1.5, "seed": 1,
             "baseline_label": "width x1.5"}
    study.enqueue_trial({}, user_attrs=point)
    trial = study.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{2**22 + 12345}")  # a dead pid
    assert reap_stale(study) == 1
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1
    assert {k: waiting[0].user_attrs[k] for k in point} == point
    assert waiting[0].user_attrs["retry_of"] == trial.number


def test_control_study_uses_the_random_sampler(tmp_path, capsys, write_study):
    from condconv_nas.cli import main

    path = write_study(trials=2, recipe={"epochs": 1, "batch_size": 64, "lr": 0.2})
    assert main(["search", str(path), "--control"]) == 0
    storage = open_storage(load_study_config(path).storage)
    control = optuna.load_study(study_name="t.random", storage=storage)
    assert len(control.trials) == 2 and control.user_attrs["kind"] == "random-control"
    assert whole(control.user_attrs, "config")["sampler"] == "random"
    assert main(["search", str(path), "--control", "--sampler", "tpe"]) == 2
    assert main(["baselines", str(path), "--families", "width,height"]) == 2
    assert "'height' is not a family" in capsys.readouterr().err


def test_worker_envs_pin_one_gpu_each_or_split_cpu_threads(tmp_path, monkeypatch, write_study):
    import dataclasses

    import torch

    from condconv_nas.search.workers import worker_envs

    cfg = dataclasses.replace(load_study_config(write_study()), workers=3, device="auto")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_envs(cfg)] == ["0", "1", "0"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    envs = worker_envs(cfg)
    assert all(e["OMP_NUM_THREADS"] == "2" and e["CUDA_VISIBLE_DEVICES"] == "" for e in envs)
    cpu = dataclasses.replace(cfg, device="cpu")  # a CPU study never claims the GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert all("OMP_NUM_THREADS" in e for e in worker_envs(cpu))
    # Workers left unset: one per visible GPU, else one; a number given is kept.
    from condconv_nas.search.workers import resolve_workers

    unset = load_study_config(write_study())
    assert unset.workers == 0 and resolve_workers(unset).workers == 2
    assert resolve_workers(dataclasses.replace(unset, device="cpu")).workers == 1
    assert resolve_workers(cfg).workers == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_workers(unset).workers == 1


def test_several_workers_per_gpu_are_pinned_evenly_with_their_share_of_threads(
        tmp_path, monkeypatch, capsys, write_study):
    import dataclasses
    from collections import Counter

    import torch

    from condconv_nas.cli import main
    from condconv_nas.search.workers import resolve_workers, worker_envs

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = load_study_config(write_study(workers_per_gpu=3))
    assert cfg.workers_per_gpu == 3 and cfg.workers == 0
    cfg = resolve_workers(dataclasses.replace(cfg, device="auto"))
    assert cfg.workers == 6
    envs = worker_envs(cfg, cores=16)
    assert Counter(e["CUDA_VISIBLE_DEVICES"] for e in envs) == {"0": 3, "1": 3}
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"2"}  # 16 cores over 6 workers
    assert resolve_workers(dataclasses.replace(cfg, workers=4)).workers == 4  # given: kept
    # A CPU study ignores it: one worker, no GPU.
    assert resolve_workers(dataclasses.replace(cfg, workers=0, device="cpu")).workers == 1
    with pytest.raises(StudyError, match="workers_per_gpu: must be an integer >= 1"):
        load_study_config(write_study(workers_per_gpu=0))
    assert main(["search", str(write_study()), "--workers-per-gpu", "0"]) == 2
    assert "--workers-per-gpu: must be >= 1, got 0" in capsys.readouterr().err


def test_resumed_study_draws_new_samples(tmp_path, write_study):
    # Resuming must not replay the first run's sequence (it would train repeats of its trials).
    quick = {"recipe": {"epochs": 1, "batch_size": 64, "lr": 0.2}, "train_limit": 200,
             "sampler": "random"}  # only the sampled parameters matter here
    run_search(load_study_config(write_study(trials=3, **quick)), print_fn=lambda s: None)
    run_search(load_study_config(write_study(trials=6, **quick)), print_fn=lambda s: None)
    trials = load(tmp_path / "t.yaml").trials
    assert [t.params for t in trials[:3]] != [t.params for t in trials[3:]]


def test_interrupt_while_claiming_gives_the_trial_back(tmp_path, monkeypatch, ctrl_c_heeded, write_study):
    import signal as sig

    from condconv_nas.search.workers import _claim

    cfg = load_study_config(write_study(trials=3))
    study = optuna.create_study(study_name="t", storage=open_storage(cfg.storage),
                                directions=["maximize", "minimize"])
    ask = optuna.Study.ask

    def ask_then_interrupt(self, *a, **k):
        trial = ask(self, *a, **k)
        sig.raise_signal(sig.SIGINT)  # arrives while the claim holds Ctrl-C back
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _claim(study, cfg, "me:1")
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL and t.user_attrs["stale"]  # not left RUNNING


def test_over_budget_claim_gives_itself_up():
    from condconv_nas.search.workers import _over_budget

    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(3):
        study.tell(study.ask(), [0.5, 1.0])
    late = study.ask()  # as if two machines had both seen 2 of 3 and asked
    assert _over_budget(study, late, 4) is False
    assert _over_budget(study, late, 3) is True
    frozen = study.get_trials()[late.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["stale"]


def test_pruner_ignores_repeats_of_one_architecture(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    curve = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.9}]
    for i in range(3):  # one architecture, then two trials that reused its result
        attrs = {"madds": 100, "curve": curve}
        if i:
            attrs["reused_from"] = 0
        study.add_trial(optuna.trial.create_trial(values=[0.9, 100.0], user_attrs=attrs))
    assert not should_prune(study, 200, 2, 0.8, PrunerConfig(k=2, warmup_epochs=1))
    assert should_prune(study, 200, 2, 0.8, PrunerConfig(k=1, warmup_epochs=1))


def test_opening_a_fresh_database_beside_other_processes_retries_the_table_race(monkeypatch):
    import optuna

    from condconv_nas.store import storage as storage_mod

    calls: list[str] = []

    class Racing:
        """RDBStorage as a worker sees it when another one created the tables an instant ago."""

        def __init__(self, url: str, **kwargs) -> None:
            calls.append(url)
            if len(calls) < 3:
                raise RuntimeError('(psycopg.errors.UniqueViolation) duplicate key value violates '
                                   'unique constraint "pg_type_typname_nsp_index"')

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr(storage_mod.time, "sleep", lambda s: None)
    assert isinstance(storage_mod.open_storage("postgresql://h/db"), Racing) and len(calls) == 3
    # Any other failure is reported at once, and a race that never ends is reported too.
    for message, match, tries in (("connection refused", "cannot be opened .connection refused", 1),
                                  ("relation already exists", "already exists",
                                   storage_mod.CREATE_TRIES)):
        calls.clear()

        def failing(url: str, message: str = message, **kwargs) -> None:
            calls.append(url)
            raise RuntimeError(message)

        monkeypatch.setattr(optuna.storages, "RDBStorage", failing)
        with pytest.raises(StorageError, match=match):
            storage_mod.open_storage("postgresql://h/db")
        assert len(calls) == tries
