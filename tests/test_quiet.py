"""Quiet by default: Optuna's warnings a user cannot act on are silenced where each is raised,
and nowhere else (the same feature used directly still warns)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import optuna
import yaml

from condconv_nas.search.samplers import make_sampler
from condconv_nas.store.quiet import HEARTBEAT_ASK, heartbeat_ask
from condconv_nas.store.storage import open_storage
from tests.conftest import ROOT


def _caught(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()
    return [f"{w.category.__name__}: {w.message}" for w in seen]


def test_a_database_search_prints_no_optuna_warning(tmp_path):
    study = tmp_path / "q.yaml"
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(name="q", space=str(ROOT / "search_spaces" / "tiny.yaml"), trials=3,
                storage=f"sqlite:///{tmp_path / 'q.db'}")
    study.write_text(yaml.safe_dump(data))
    env = dict(os.environ, PYTHONWARNINGS="always")  # nothing filtered outside our own blocks
    for args in (["search", str(study)], ["studies", "--storage", data["storage"]],
                 ["report", str(study), "-o", str(tmp_path / "q.html")]):
        proc = subprocess.run([sys.executable, "-m", "condconv_nas.cli", *args], env=env,
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr, proc.stderr
    # The same search reached the heartbeat paths that used to warn: a database with heartbeats.
    storage = open_storage(data["storage"], create=False)
    assert len(optuna.load_study(study_name="q", storage=storage).trials) == 3


def test_silenced_only_where_raised():
    # Our sampler is built quietly; Optuna's own TPE with group=True still warns the user.
    assert _caught(lambda: make_sampler("tpe", seed=0, trials=20)) == []
    direct = _caught(lambda: optuna.samplers.TPESampler(multivariate=True, group=True))
    assert any("ExperimentalWarning" in w and "group" in w for w in direct), direct


def test_heartbeat_reminder_silenced_only_around_our_ask(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    plain = _caught(study.ask)
    assert any(HEARTBEAT_ASK in w for w in plain), plain  # Optuna's reminder, unsilenced

    def ours() -> None:
        with heartbeat_ask():
            study.ask()

    assert _caught(ours) == []
