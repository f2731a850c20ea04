"""Journal files: a cut-off record is dropped before appending; non-journals are refused untouched."""

from __future__ import annotations

import optuna
import pytest

from condconv_nas.cli import main
from condconv_nas.errors import UserError
from condconv_nas.store.storage import open_storage


def _journal(path, trials: int = 2) -> bytes:
    study = optuna.create_study(study_name="j", storage=open_storage(str(path)))
    for i in range(trials):
        study.add_trial(optuna.trial.create_trial(value=float(i)))
    return path.read_bytes()


def test_a_cut_off_last_record_is_dropped_and_the_study_stays_readable(tmp_path, capsys):
    path = tmp_path / "s.journal"
    whole = _journal(path)
    cut = b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "par'  # a write that was killed
    path.write_bytes(whole + cut)
    study = optuna.load_study(study_name="j", storage=open_storage(str(path)))
    assert path.read_bytes() == whole  # exactly the complete records are left
    assert f"dropped a cut-off last record ({len(cut)} bytes)" in capsys.readouterr().err
    study.add_trial(optuna.trial.create_trial(value=9.0))
    again = optuna.load_study(study_name="j", storage=open_storage(str(path), create=False))
    assert [t.value for t in again.trials] == [0.0, 1.0, 9.0]


def test_a_reader_leaves_the_file_alone_and_says_what_it_skips(tmp_path, capsys):
    path = tmp_path / "s.journal"
    whole = _journal(path)
    assert "incomplete record" not in capsys.readouterr().err
    open_storage(str(path), create=False)
    assert "incomplete record" not in capsys.readouterr().err  # a whole journal: no note
    cut = whole + b'{"op_code": 5'
    path.write_bytes(cut)
    study = optuna.load_study(study_name="j", storage=open_storage(str(path), create=False))
    assert len(study.trials) == 2 and path.read_bytes() == cut
    assert "ends in an incomplete record" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00binary", b"some notes\n"])
def test_a_file_that_is_not_a_journal_is_refused_unchanged(tmp_path, content):
    path = tmp_path / "notes.journal"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not an Optuna journal"):
        open_storage(str(path))
    assert path.read_bytes() == content


def test_a_malformed_record_in_the_middle_is_one_error(tmp_path):
    path = tmp_path / "s.journal"
    lines = _journal(path).splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], b"{not json}\n", *lines[1:]]))
    with pytest.raises(UserError, match="has a malformed record"):
        open_storage(str(path), create=False)


def test_cli_storage_paths_that_cannot_be_journals(tmp_path, capsys):
    folder = tmp_path / "adir"
    folder.mkdir()
    for storage, needle in [("", "storage is empty"), (str(folder), "is a folder")]:
        assert main(["studies", "--storage", storage]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
