"""Journal-file storages: checked before Optuna reads or appends to them.

Optuna appends records to whatever file it is given and skips a cut-off last line when reading;
appending after such a line glues two records into one undecodable line and loses the study.
So a file that is not a journal is refused, and a writer drops a cut-off tail (left by a write
that was killed) under the journal's own lock before anything is appended.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna

from ..errors import UserError
from .optuna_internals import unsynced_journal_backend

__all__ = ["JournalError", "open_journal"]


class JournalError(UserError):
    """A journal path that is not a journal file, or a journal with a malformed record."""


def open_journal(path: str, writer: bool) -> optuna.storages.JournalStorage:
    """The journal storage at `path`; a writer first drops a cut-off last record."""
    from optuna.storages.journal import JournalFileOpenLock
    from optuna.storages.journal._file import get_lock_file

    file = Path(path)
    if file.exists() and not file.is_file():
        kind = "a folder" if file.is_dir() else "not a regular file"
        raise JournalError(f"storage {path} is {kind}; give a journal file path such as "
                           f"{file / 'study.journal' if file.is_dir() else 'study.journal'}")
    if file.is_file():
        _check_head(file)
    lock = JournalFileOpenLock(path)  # works on filesystems without symlinks too
    if writer and file.is_file():
        with get_lock_file(lock):  # no other writer is half-way through a record meanwhile
            _drop_cut_off_tail(file)
    elif file.is_file() and _complete_length(file) < file.stat().st_size:
        # A reader leaves the file as it is (a writer may be mid-record); Optuna skips the tail.
        print(f"note: storage {file} ends in an incomplete record (a write in progress or "
              "interrupted, or not a journal); reading the complete records only", file=sys.stderr)
    try:
        return optuna.storages.JournalStorage(unsynced_journal_backend()(path, lock_obj=lock))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, Optuna's "Invalid log format"
        raise JournalError(f"storage {path} has a malformed record ({str(err)[:120]}); it is "
                           "not an Optuna journal or was edited: restore it from a copy or give "
                           "a new storage path") from None


def _check_head(file: Path) -> None:
    """Refuse a non-empty file whose first record does not start as Optuna's JSON records do."""
    with open(file, "rb") as f:
        head = f.read(1)
    if head and head != b"{":
        raise JournalError(f"storage {file} is not an Optuna journal (it does not start with a "
                           "JSON record); give a new .journal path or an existing journal")


def _complete_length(file: Path) -> int:
    """Bytes up to and including the last newline: the complete records (all of an empty file)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        f.seek(max(0, size - 1))
        if size == 0 or f.read(1) == b"\n":
            return size
        # Read back in blocks until the last newline: a cut-off record is short.
        keep, end = 0, size  # keep 0: no newline at all, the only record was cut off
        while end > 0 and not keep:
            start = max(0, end - (1 << 16))
            f.seek(start)
            if (i := f.read(end - start).rfind(b"\n")) >= 0:
                keep = start + i + 1
            end = start
    return keep


def _drop_cut_off_tail(file: Path) -> None:
    """Truncate the bytes after the last newline (a record whose write was killed)."""
    size, keep = file.stat().st_size, _complete_length(file)
    if keep == size:
        return
    with open(file, "rb+") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    print(f"note: storage {file}: dropped a cut-off last record ({size - keep} bytes) left by "
          "an interrupted write; every complete record is kept", file=sys.stderr)
