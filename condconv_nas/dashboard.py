"""optuna-dashboard on a study's storage, with its artifacts (the extra `dashboard`).

`condconv-nas dashboard STUDY` serves every study of the storage (the search, its baselines,
confirmations and other siblings) with the trained weights as downloadable artifacts, prints the
study's URL, and stops on Ctrl-C. Over-budget samples and repeated architectures are stored
PRUNED (`search/objective.SkippedTrial`), so the dashboard's plots show trained architectures
only, as the report does.
"""

from __future__ import annotations

import socketserver
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import UserError
from .search.config import StudyConfig
from .store.storage import open_storage

__all__ = ["DashboardError", "dashboard_app", "serve_dashboard"]

EXTRA = "pip install 'condconv-nas[dashboard]'"


class DashboardError(UserError):
    """The dashboard cannot start: the extra is missing, the port is taken, the study absent."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """One thread a request, as optuna-dashboard's own command serves (the page asks in parallel)."""

    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    """No line on stderr per request."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Drop the access log line."""


def dashboard_app(cfg: StudyConfig) -> Callable:
    """The dashboard's WSGI app on the study's storage and artifact folder; checks the study is
    stored there."""
    return _app(cfg)[0]


def _app(cfg: StudyConfig) -> tuple[Callable, int]:
    """The dashboard's WSGI app and the study's id in the storage (opened once)."""
    try:
        import optuna_dashboard
        from optuna.artifacts import FileSystemArtifactStore
    except ImportError:
        raise DashboardError(f"the dashboard needs optuna-dashboard; {EXTRA}") from None
    from .analysis.results import stored_names

    storage = open_storage(cfg.storage, create=False)
    stored_names(storage, cfg.name, cfg.storage)
    folder = Path(cfg.artifacts) if cfg.artifacts else None
    store = FileSystemArtifactStore(str(folder)) if folder and folder.is_dir() else None
    return (optuna_dashboard.wsgi(storage, artifact_store=store),
            storage.get_study_id_from_name(cfg.name))


def study_url(host: str, port: int, study_id: int) -> str:
    """The dashboard page of a study (by its storage id)."""
    shown = "localhost" if host in ("", "0.0.0.0", "::") else host
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


def serve_dashboard(cfg: StudyConfig, host: str = "127.0.0.1", port: int = 8080,
                    print_fn: Callable[[str], None] = print) -> None:
    """Serve the dashboard until Ctrl-C (port 0: any free port); prints the study's URL."""
    app, study_id = _app(cfg)
    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    except OSError as err:
        raise DashboardError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass "
                             "another --port (0 picks a free one) or --host") from None
    with server:
        url = study_url(host, server.server_port, study_id)
        print_fn(f"dashboard of study {cfg.name} ({cfg.storage}): {url}")
        print_fn("Ctrl-C stops it")
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            print_fn("dashboard stopped")
