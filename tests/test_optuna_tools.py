"""Optuna's own tools read a study as the report does.

A tight-budget study of the tiny space (over-budget samples and repeated architectures both
occur) with baselines and confirmations: skipped samples are PRUNED with their reason, so
`trials_dataframe`, importance and optuna-dashboard count trained architectures only, while a
replay of the sampler with the skipped trials stored the old way (COMPLETE) draws exactly the
stored parameters; queued runs carry family, multiplier and seed as parameters; no attribute
passes 1,024 characters; the dashboard's JSON API and its command serve what is stored.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

import condconv_nas as cn
from condconv_nas.analysis.results import load_results
from condconv_nas.cli import main
from condconv_nas.nn.presets import get_preset
from condconv_nas.search.config import load_study_config
from condconv_nas.search.reproducible import slot_seed
from condconv_nas.search.samplers import make_sampler
from condconv_nas.store.attrs import LIMIT, in_parts, shown_length, whole
from condconv_nas.store.record import TrialRecord, pack_bits, record_attrs, unpack_bits
from condconv_nas.store.storage import open_storage
from tests.conftest import study_file

TRIALS = 20


@pytest.fixture(scope="module")
def tight(tmp_path_factory) -> Path:
    """The tiny space under a budget below its dearest samples: searched, baselines, confirmed."""
    folder = tmp_path_factory.mktemp("tight")
    path = study_file(folder, "tight", budget_madds="1.9M", trials=TRIALS, workers=1,
                      train_limit=400, val_size=200,
                      baselines={"families": ["width", "depth"], "points": 2, "seeds": 1},
                      confirm={"seeds": 2})
    study = cn.Study.load(path, progress=lambda line: None)
    study.search()
    study.baselines()
    study.confirm()
    return path


def _study(path: Path, suffix: str = "") -> optuna.Study:
    cfg = load_study_config(path)
    return optuna.load_study(study_name=cfg.name + suffix,
                             storage=open_storage(cfg.storage, create=False))


def test_skipped_samples_are_pruned_with_their_reason(tight):
    trials = _study(tight).get_trials()
    assert len(trials) == TRIALS
    over = repeats = 0
    for t in trials:
        r = TrialRecord.of(t.user_attrs)
        if t.state == TrialState.COMPLETE:  # trained: neither over budget nor a repeat
            assert not r.infeasible and r.reused_from is None and not r.skipped and r.curve
            continue
        assert t.state == TrialState.PRUNED and r.skipped and t.values is None
        if r.infeasible:
            over += 1
            assert r.madds > 1_900_000 and r.known_values == [0.0, float(r.madds)]
            assert "over the MAdds budget" in r.skipped and not r.curve
        else:
            repeats += 1
            original = trials[r.reused_from]
            assert original.state == TrialState.COMPLETE and original.params == t.params
            assert r.known_values == original.values and f"trial {r.reused_from}" in r.skipped
    assert over >= 1 and repeats >= 1  # this study has both kinds, so both were checked


def test_trials_dataframe_lists_what_the_report_lists(tight):
    df = _study(tight).trials_dataframe()
    trained = df[df.state == "COMPLETE"]
    results = load_results(open_storage(load_study_config(tight).storage, create=False), "tight")
    finished = results.finished[results.finished.family == "search"]
    assert sorted(zip(trained.number, trained.values_val_acc)) == sorted(
        zip(finished.number.astype(int), finished.val_acc))
    # Importance as the report computes it is Optuna's own on the stored study, error as target.
    mine = optuna.importance.get_param_importances(_study(tight), target=lambda t: 1 - t.values[0])
    assert set(mine) == set(results.importances)
    for name, value in results.importances.items():
        assert mine[name] == pytest.approx(value)


def test_the_sampler_draws_what_it_drew_when_skipped_trials_were_complete(tight):
    """Replay every slot with plain Optuna, shown trials 0..n-1 as they were stored before
    skipped trials were PRUNED (COMPLETE with their values): the parameters stored come out."""
    cfg = load_study_config(tight)
    stored = _study(tight).get_trials()
    for n, t in enumerate(stored):
        assert TrialRecord.of(t.user_attrs).slot == n  # one worker: trial n is slot n
        replay = optuna.create_study(directions=["maximize", "minimize"],
                                     sampler=make_sampler("tpe", slot_seed(cfg.seed, n), TRIALS))
        for old in stored[:n]:
            r = TrialRecord.of(old.user_attrs)
            replay.add_trial(create_trial(
                state=TrialState.COMPLETE, values=old.values or r.known_values,
                params=old.params, distributions=old.distributions,
                user_attrs=old.user_attrs, system_attrs=old.system_attrs))
        trial = replay.ask()
        cfg.space.sample(trial)
        assert trial.params == t.params, f"slot {n}"


def test_queued_runs_carry_family_multiplier_and_seed(tight):
    for suffix in (".baseline", ".confirm"):
        trials = _study(tight, suffix).get_trials(states=(TrialState.COMPLETE,))
        assert trials
        for t in trials:
            r = TrialRecord.of(t.user_attrs)
            expected = {"family": r.family, "seed": r.seed,
                        **({} if r.multiplier is None else {"multiplier": r.multiplier})}
            assert t.params == pytest.approx(expected) or t.params == expected
        for name in ("family", "seed", "multiplier"):  # one distribution a study: importance reads it
            assert len({repr(t.distributions[name]) for t in trials if name in t.params}) <= 1
    baseline = _study(tight, ".baseline")
    out = optuna.importance.get_param_importances(baseline, target=lambda t: 1 - t.values[0])
    assert {"family", "multiplier"} <= set(out)
    confirm = _study(tight, ".confirm").get_trials(states=(TrialState.COMPLETE,))
    assert {t.params["family"] for t in confirm} >= {"search"}


def test_every_parameter_is_explained_in_the_study(tight):
    meanings = whole(_study(tight).user_attrs, "parameters")
    patterns = [re.compile("^" + re.sub(r"<[NM]>", r"\\d+", k) + "$") for k in meanings]
    names = {p for t in _study(tight).get_trials() for p in t.params}
    assert names and all(any(p.match(n) for p in patterns) for n in names)
    assert set(whole(_study(tight, ".baseline").user_attrs, "parameters")) == {
        "family", "multiplier", "seed"}


def test_no_stored_attribute_passes_the_dashboard_limit(tight):
    storage = open_storage(load_study_config(tight).storage, create=False)
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for key, value in study.user_attrs.items():
            assert shown_length(value) <= LIMIT, (summary.study_name, key)
        for t in study.get_trials():
            for key, value in t.user_attrs.items():
                assert shown_length(value) <= LIMIT, (summary.study_name, t.number, key)
    # The search's settings are longer than the limit, so they were stored in parts.
    attrs = _study(tight).user_attrs
    assert "settings:1" in attrs and whole(attrs, "settings")["dataset"] == "synthetic"


def test_long_record_fields_are_stored_in_parts_and_read_back_whole():
    spec = get_preset("condconv_efficientnet_b0_8e").to_dict()
    bits = [i % 3 != 0 for i in range(20_000)]
    curve = [{"epoch": e, "val_acc": 0.5 + e / 1000} for e in range(1, 80)]
    attrs = record_attrs(spec=spec, holdout_correct=pack_bits(bits), curve=curve, seed=2)
    assert all(shown_length(v) <= LIMIT for v in attrs.values())
    assert len(attrs) > 4  # each long field went into parts
    r = TrialRecord.of(attrs)
    assert (r.spec, unpack_bits(r.holdout_correct), r.curve, r.seed) == (spec, bits, curve, 2)
    # The marker follows its parts, so a reader never meets a marker without them.
    keys = list(in_parts("spec", spec))
    assert keys[-1] == "spec" and keys[:-1] == [f"spec:{i}" for i in range(1, len(keys))]
    assert whole({"spec": spec}, "spec") == spec  # a value stored whole (older studies) as is
    assert whole({"spec": {"_parts": 2}, "spec:1": "{"}, "spec") is None  # a part missing


def _get(app, path: str) -> dict:
    from wsgiref.util import setup_testing_defaults

    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)


def test_the_dashboard_api_shows_trained_trials_and_baseline_parameters(tight):
    pytest.importorskip("optuna_dashboard")
    from condconv_nas.dashboard import dashboard_app

    app = dashboard_app(load_study_config(tight))
    ids = {s["study_name"]: s["study_id"] for s in _get(app, "/api/studies")["study_summaries"]}
    assert {"tight", "tight.baseline", "tight.confirm"} <= set(ids)
    search = _get(app, f"/api/studies/{ids['tight']}")
    results = load_results(open_storage(load_study_config(tight).storage, create=False), "tight")
    finished = results.finished[results.finished.family == "search"]
    complete = {t["number"]: t["values"][0] for t in search["trials"] if t["state"] == "Complete"}
    assert complete == dict(zip(finished.number.astype(int), finished.val_acc))
    from condconv_nas.analysis.pareto import front

    assert {t["number"] for t in search["best_trials"]} == set(front(finished).number.astype(int))
    kept = [t for t in search["trials"]
            if any(a["key"] == "weights_artifact" for a in t["user_attrs"])]
    assert kept and all(t["artifacts"] for t in kept)  # weights download from the dashboard
    baseline = _get(app, f"/api/studies/{ids['tight.baseline']}")
    for t in baseline["trials"]:
        assert {p["name"] for p in t["params"]} == {"family", "multiplier", "seed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_command_prints_its_url_and_stops_on_ctrl_c(tight):
    pytest.importorskip("optuna_dashboard")
    proc = subprocess.Popen([sys.executable, "-m", "condconv_nas.cli", "dashboard", str(tight),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+", line).group(0)
        base = url.split("/dashboard/")[0]
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as reply:
            names = {s["study_name"] for s in json.load(reply)["study_summaries"]}
        assert "tight" in names
        study_id = int(url.rsplit("/", 1)[1])
        with urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=30) as reply:
            assert json.load(reply)["name"] == "tight"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "dashboard stopped" in out and "Traceback" not in err


def test_dashboard_errors_are_one_line(tight, tmp_path, capsys, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(tight), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on" in err and "--port" in err and len(err.strip().splitlines()) == 1
    assert main(["dashboard", str(study_file(tmp_path, "absent", trials=2)), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # the extra not installed
    assert main(["dashboard", str(tight), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert "condconv-nas[dashboard]" in err and len(err.strip().splitlines()) == 1


def test_the_optuna_tools_page_runs(tight, tmp_path, monkeypatch):
    """The page's Python runs as written on a study stored as the quickstart's is."""
    blocks = re.findall(r"```python\n(.*?)```", (Path(__file__).parent.parent / "docs" /
                                                 "optuna-tools.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    (tmp_path / "studies").mkdir()
    stored = load_study_config(tight).storage
    (tmp_path / "studies" / "quickstart.journal").write_bytes(Path(stored).read_bytes())
    storage = open_storage(str(tmp_path / "studies" / "quickstart.journal"))
    optuna.copy_study(from_study_name="tight", from_storage=storage, to_storage=storage,
                      to_study_name="quickstart")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "docs/optuna-tools.md", "exec"), scope)  # noqa: S102
    trained = scope["trained"]
    assert len(trained) == sum(t.state == TrialState.COMPLETE for t in _study(tight).trials)
    results = load_results(open_storage(stored, create=False), "tight")
    assert set(scope["importance"]) == set(results.importances)
