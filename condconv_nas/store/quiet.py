"""Optuna's warnings that a user can do nothing about, silenced exactly where each is raised.

Each is silenced around the one call that raises it, never process-wide: a user's own use of the
same experimental feature in a notebook still warns. What each says, and why it is not ours to
heed:

- `ask()` with a heartbeat storage: "supposed to be used with Study.optimize". Our workers ask
  and tell themselves, and beat the heartbeat around each trial (storage.beating).
- `TPESampler(group=True)`, `Study.set_metric_names`, `RDBStorage(heartbeat_interval=...)`,
  `RetryHeartbeatStaleTrialCallback`, `fail_stale_trials`: marked experimental since Optuna 2-3,
  used here as documented (checked against the Optuna versions pyproject.toml admits).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

import optuna

__all__ = ["HEARTBEAT_ASK", "experimental", "heartbeat_ask"]

HEARTBEAT_ASK = "Heartbeat of storage is supposed to be used with Study.optimize"


@contextlib.contextmanager
def _ignoring(category: type[Warning], message: str) -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield


def experimental(feature: str) -> contextlib.AbstractContextManager[None]:
    """Optuna's ExperimentalWarning about `feature` (a name in its text: "group",
    "set_metric_names"), silenced in this block only."""
    return _ignoring(optuna.exceptions.ExperimentalWarning, rf".*\b{re.escape(feature)}\b")


def heartbeat_ask() -> contextlib.AbstractContextManager[None]:
    """Optuna's reminder that heartbeats belong to Study.optimize, silenced in this block only."""
    return _ignoring(UserWarning, re.escape(HEARTBEAT_ASK))
