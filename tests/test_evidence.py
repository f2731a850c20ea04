"""Confirmation runs, the report's claims from them, and the baseline defects they depend on."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from condconv_nas.analysis.pareto import front
from condconv_nas.analysis.results import load_results
from condconv_nas.cli import main
from condconv_nas.search import study as study_mod
from condconv_nas.search.config import load_study_config
from condconv_nas.search.study import run_baselines, run_confirm, run_search
from condconv_nas.store.record import unpack_bits
from condconv_nas.store.storage import open_storage
from tests.conftest import ROOT, defaults


@pytest.fixture
def write_study(write_study):
    """This module's studies: pipeline tests, small and quick (4 trials, 400 training images)."""
    return defaults(write_study, "t", trials=4, train_limit=400, val_size=200, workers=1,
                    baselines={"families": ["width"], "points": 2, "seeds": 2},
                    confirm={"seeds": 2})


def test_confirm_retrains_the_front_with_fresh_seeds_and_the_report_claims_from_it(
        tmp_path, capsys, write_study, stored_trials):
    path = write_study()
    cfg = load_study_config(path)
    quiet = lambda s: None  # noqa: E731
    run_search(cfg, print_fn=quiet)
    run_baselines(cfg, print_fn=quiet)
    # Before confirmation the report makes no claim and says so.
    assert main(["report", str(path), "-o", str(tmp_path / "r.html"), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["confirmed"] is False and before["headline"] == {}
    assert "Not confirmed" in (tmp_path / "r.html").read_text()

    lines: list[str] = []
    run_confirm(cfg, print_fn=lines.append)
    res = load_results(open_storage(cfg.storage, create=False), "t", cfg.storage)
    search_front = front(res.finished[res.finished.family == "search"])
    runs = stored_trials(path, "t.confirm")
    by_source = {(t.user_attrs["confirm_of"], t.user_attrs["seed"]): t for t in runs
                 if "confirm_of" in t.user_attrs}
    # Every front trial, each fresh seed (1..N: the search trained it with seed index 0).
    assert set(by_source) == {(int(n), s) for n in search_front.number for s in (1, 2)}
    raw = {t.number: t for t in stored_trials(path, "t")}
    for (number, _), t in by_source.items():
        assert t.state == TrialState.COMPLETE and t.user_attrs["family"] == "search"
        assert t.user_attrs["spec"] == raw[number].user_attrs["spec"]
    seeds_of_one = [by_source[(int(search_front.number.iloc[0]), s)] for s in (1, 2)]
    assert seeds_of_one[0].user_attrs["curve"] != seeds_of_one[1].user_attrs["curve"]
    # Matched-cost controls: width configurations at each point's MAdds (within 2%, or the two
    # that bracket it), under the confirmation's seed indices.
    controls = [t for t in runs if "confirm_of" not in t.user_attrs]
    assert controls and {t.user_attrs["family"] for t in controls} == {"width"}
    seeds: dict[str, set] = {}
    for t in controls:
        seeds.setdefault(t.user_attrs["baseline_label"], set()).add(t.user_attrs["seed"])
    assert all(s == {1, 2} for s in seeds.values())
    costs = sorted({t.user_attrs["madds"] for t in controls})
    grid = res.finished[res.finished.family == "width"].madds
    for m in search_front.madds[(search_front.madds >= grid.min()) & (search_front.madds <= grid.max())]:
        assert any(abs(c - m) <= 0.02 * m for c in costs) or (
            any(c < m for c in costs) and any(c > m for c in costs)), m
    # Every run is scored on the holdout split (200 images: the validation size), image by image.
    for t in runs:
        bits = unpack_bits(t.user_attrs["holdout_correct"])
        assert len(bits) == 200 and sum(bits) / 200 == pytest.approx(t.user_attrs["holdout_acc"])
    # Resuming queues and trains nothing.
    run_confirm(cfg, print_fn=lines.append)
    assert "nothing to do" in lines[-1] and len(stored_trials(path, "t.confirm")) == len(runs)

    assert main(["report", str(path), "-o", str(tmp_path / "r.html"), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["confirmed"] is True
    # The page lists each point against its controls, as the JSON does.
    page = (tmp_path / "r.html").read_text()
    for claim in after["headline"].values():
        for p in claim["points"]:
            assert f"<td class=l>{p['point']}</td>" in page and "id=pairings" in page
    # The confirmed means in the data are the means of the confirmation runs, by hand.
    for point in after["front"]["search"]:
        accs = [by_source[(point["number"], s)].values[0] for s in (1, 2)]
        assert point["confirmed_acc"] == pytest.approx(sum(accs) / 2) and point["seeds"] == 2
    assert after["holdout"] is True
    for claim in after["headline"].values():
        assert set(claim) >= {"comparisons", "significant", "gain_mean", "gain_ci95",
                              "madds_saved_median", "confirmed", "seeds", "method", "split"}
        assert claim["split"] == "holdout"
        if claim["reason"] is None:
            lo, hi = claim["gain_ci95"]
            assert lo <= claim["gain_mean"] <= hi and claim["seeds"] == [2]
        else:  # a tiny front: a claim needs 3 independent front points
            assert not claim["significant"] and claim["verdict"].startswith("no claim")


def test_confirm_needs_a_search_and_two_seeds(tmp_path, capsys, write_study):
    path = write_study()
    assert main(["confirm", str(path), "--seeds", "1"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["confirm", str(path)]) == 2  # no search yet: nothing stored to confirm
    assert "does not exist" in capsys.readouterr().err


def test_baselines_span_the_study_budget_and_retry_failed_points(tmp_path, monkeypatch, write_study,
                                                                 stored_trials):
    # The study's budget (above the space's 6.5M) bounds the baseline grid, not the space's.
    path = write_study(budget_madds="9M")
    cfg = load_study_config(path)
    monkeypatch.setattr(study_mod, "run_workers", lambda *a, **k: 0)  # queue only
    run_baselines(cfg, print_fn=lambda s: None)
    queued = stored_trials(path, "t.baseline")
    madds = [study_mod.ArchSpec.from_dict(t.user_attrs["baseline_spec"]) for t in queued]
    from condconv_nas.nn.cost import count_cost

    top = max(count_cost(s.for_input(1, 16, 4)).madds for s in madds)
    assert top > 6.5e6 and abs(top - 9e6) / 9e6 < 0.1
    # A point whose run failed (not a dead worker's: that one is queued again anyway) is queued
    # again by the next run; a completed one is not.
    storage = open_storage(cfg.storage)
    study = optuna.load_study(study_name="t.baseline", storage=storage)
    first, second = study.ask(), study.ask()
    study.tell(first, state=TrialState.FAIL)
    study.tell(second, [0.5, 1.0])
    run_baselines(cfg, print_fn=lambda s: None)
    trials = stored_trials(path, "t.baseline")
    keys = [(t.user_attrs["baseline_label"], t.user_attrs["seed"]) for t in trials]
    failed = (trials[first.number].user_attrs["baseline_label"],
              trials[first.number].user_attrs["seed"])
    done = (trials[second.number].user_attrs["baseline_label"],
            trials[second.number].user_attrs["seed"])
    waiting = [k for t, k in zip(trials, keys) if t.state == TrialState.WAITING]
    assert failed in waiting and done not in waiting
    assert len(trials) == len(queued) + 1


def test_other_result_settings_are_refused_and_nothing_changes(tmp_path, capsys, write_study):
    path = write_study(trials=1)
    run_search(load_study_config(path), print_fn=lambda s: None)
    journal = tmp_path / "t.journal"
    before = journal.read_bytes()
    # A raised epoch count would silently mix accuracies trained under two recipes.
    write_study(trials=2, recipe={"epochs": 2, "batch_size": 64, "lr": 0.2})
    for command in (["search", str(path)], ["baselines", str(path)], ["confirm", str(path)],
                    ["worker", str(path)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "recipe.epochs" in err[0] and "new name" in err[0], err
        assert journal.read_bytes() == before
    write_study(trials=2, seed=1, train_limit=100)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train_limit" in err and "seed" in err
    # Another space: the message names the innermost difference, not two whole spaces.
    tiny = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    tiny["stages"][1]["experts"] = [0, 8]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(tiny))
    write_study(trials=2, space=str(tmp_path / "other.yaml"))
    assert main(["search", str(path)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "space.stages[1].experts: stored [0, 4], now [0, 8]" in err and len(err) < 400, err
    assert journal.read_bytes() == before
    # Settings that do not change a result may change: more trials, other workers.
    write_study(trials=2, workers=1)
    assert main(["search", str(path)]) == 0
