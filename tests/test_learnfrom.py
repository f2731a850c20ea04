"""What a multi-fidelity sampler learns from: rung ranks against scipy's ranking, the top-rung
filter by hand, and whole searches whose sampler is watched to see only what learn_from says."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial
from scipy.stats import rankdata

import condconv_nas.search.workers as workers_module
from condconv_nas.cli import main
from condconv_nas.search.config import load_study_config
from condconv_nas.search.learnfrom import rung_ranks, sampler_trials
from condconv_nas.search.multifidelity import MultiFidelity
from condconv_nas.search.study import run_search
from condconv_nas.store.storage import open_storage
from tests.test_multifidelity import mf_writer

MF = MultiFidelity(1, 9, 3)  # rungs 1, 3, 9: top rung 2



@pytest.fixture
def write_study(write_study, tmp_path):
    """test_multifidelity's studies (mf_writer)."""
    return mf_writer(write_study, tmp_path)

def test_rung_ranks_are_scipys_mid_ranks():
    rng = random.Random(0)
    for n in (1, 2, 7, 30):
        acc = [rng.choice([0.1, 0.5, 0.5, 0.7, rng.random()]) for _ in range(n)]
        want = (rankdata(acc, method="average") - 0.5) / n
        assert rung_ranks(acc) == pytest.approx(list(want))


def _trials(rng: random.Random) -> list[optuna.trial.FrozenTrial]:
    out = []
    for i in range(40):
        rung, kind = rng.choice([0, 0, 0, 1, 1, 2]), rng.random()
        attrs = {"rung": rung} if rung else {}
        if kind < 0.1:  # over budget: never trained
            out.append(create_trial(values=[0.0, 9e6], user_attrs={**attrs, "infeasible": True}))
        elif kind < 0.2:
            out.append(create_trial(state=TrialState.FAIL, user_attrs=attrs))
        else:
            out.append(create_trial(values=[round(rng.random(), 2), rng.uniform(1e5, 1e6)],
                                    user_attrs=attrs))
        out[-1].number = i
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampler_trials_by_hand(seed):
    trials = _trials(random.Random(seed))
    stored = [(t.values, dict(t.user_attrs)) for t in trials]
    assert sampler_trials(trials, None) == trials
    assert sampler_trials(trials, MultiFidelity(1, 9, 3, "all")) == trials
    top = sampler_trials(trials, MultiFidelity(1, 9, 3, "top"))
    assert [t.number for t in top] == [
        t.number for t in trials if t.user_attrs.get("rung", 0) == 2
        or t.user_attrs.get("infeasible") or t.state == TrialState.FAIL]
    ranked = sampler_trials(trials, MultiFidelity(1, 9, 3, "ranks"))
    assert [t.number for t in ranked] == [t.number for t in trials]
    for rung in (0, 1, 2):
        members = [t for t in trials if t.user_attrs.get("rung", 0) == rung
                   and t.state == TrialState.COMPLETE and not t.user_attrs.get("infeasible")]
        want = (rankdata([t.values[0] for t in members]) - 0.5) / len(members)
        got = {t.number: t.values for t in ranked}
        for t, w in zip(members, want):
            assert got[t.number] == pytest.approx([w, t.values[1]])
    for t in ranked:  # over budget and failed ones as stored
        if t.user_attrs.get("infeasible") or t.state == TrialState.FAIL:
            assert t.values == trials[t.number].values
    assert [(t.values, t.user_attrs) for t in trials] == stored  # the study's own trials untouched


class _Watching(optuna.samplers.RandomSampler):
    """Random sampling that records the finished trials it was shown at each trial."""

    shown: list[list[tuple[int, list[float], object]]] = []

    def before_trial(self, study, trial):
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        _Watching.shown.append([(t.user_attrs.get("rung", 0), t.values, t.datetime_start)
                                for t in done])


@pytest.mark.parametrize("learn", ["top", "ranks"])
@pytest.mark.parametrize("reproducible", [True, False])
def test_search_sampler_sees_what_learn_from_says(tmp_path, monkeypatch, learn, reproducible, write_study):
    monkeypatch.setattr(workers_module, "make_sampler", lambda name, seed, trials: _Watching(seed))
    _Watching.shown = []
    path = write_study(str(tmp_path / "s.journal"), workers=1, trials=6,
                       reproducible=reproducible,
                       multifidelity={"min_epochs": 1, "max_epochs": 4, "eta": 2,
                                      "learn_from": learn})
    cfg = load_study_config(path)
    run_search(cfg, print_fn=lambda s: None)
    study = optuna.load_study(study_name=cfg.name, storage=open_storage(cfg.storage))
    rungs = {t.user_attrs.get("rung", 0) for t in study.trials}
    assert rungs == {0, 1, 2}  # the search promoted to the top rung
    seen = [entry for shown in _Watching.shown for entry in shown]
    assert seen  # the sampler was shown finished trials
    if learn == "top":
        assert {rung for rung, _, _ in seen} == {2}
        return
    assert {rung for rung, _, _ in seen} == {0, 1, 2}
    stored = {t.datetime_start: t for t in study.trials}
    for shown in _Watching.shown:  # each view ranks a rung's stored accuracies among those shown
        for rung in (0, 1, 2):
            here = [(v, stored[when]) for r, v, when in shown
                    if r == rung and not stored[when].user_attrs.get("infeasible")]
            if here:
                want = (rankdata([t.values[0] for _, t in here]) - 0.5) / len(here)
                assert [v[0] for v, _ in here] == pytest.approx(list(want))
                assert [v[1] for v, _ in here] == [t.values[1] for _, t in here]


def test_learn_from_is_checked_and_may_change_on_resume(tmp_path, capsys, write_study):
    path = write_study(str(tmp_path / "s.journal"), workers=1, trials=2)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "multifidelity": {**data["multifidelity"],
                                                              "learn_from": "best"}}))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "multifidelity.learn_from: must be one of all, top, ranks" in err and err.count("\n") == 1
    assert not Path(data["storage"]).exists()
    for learn, trials in (("all", 2), ("ranks", 3)):  # steering sampling, not a trained result
        path.write_text(yaml.safe_dump({**data, "trials": trials,
                                        "multifidelity": {**data["multifidelity"],
                                                          "learn_from": learn}}))
        assert main(["search", str(path)]) == 0
