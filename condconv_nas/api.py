"""The front door: a study as one Python object, for notebooks and scripts (the CLI calls it too).

    import condconv_nas as cn
    study = cn.Study.load("studies/quickstart.yaml")
    study.search(trials=40)
    study.baselines(); study.confirm(seeds=3)
    study.headline()          # the typed claims, each with its method and split
    study.report("reports/quickstart.html"); study.export(pick="best", out="exports/best")

Every method resumes what is stored, exactly as the command of the same name does. Progress
lines go to `progress`: `print` by default, any callable taking a line, None for silence, or
"bar" for a progress bar over the study's runs (tqdm, which Optuna already depends on).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from .analysis.claims import Headline
    from .analysis.report import Report
    from .analysis.results import StudyResults
    from .search.config import StudyConfig

__all__ = ["Results", "Study"]

Progress = Callable[[str], None] | str | None


@dataclasses.dataclass(frozen=True)
class Results:
    """A study's runs as pandas frames: the search and its random control (`trials`), the
    baseline families, the confirmations of front points and their matched-cost controls."""

    trials: pd.DataFrame
    baselines: pd.DataFrame
    confirmations: pd.DataFrame
    controls: pd.DataFrame
    raw: StudyResults  # everything else stored (manifest, importances, calibration, fidelity)


class Study:
    """A study file and its storage; the methods are the CLI's commands, returning data."""

    def __init__(self, config: StudyConfig, progress: Progress = print) -> None:
        self.config = config
        self.progress = progress

    @classmethod
    def load(cls, path: str | Path, storage: str | None = None, progress: Progress = print,
             **overrides: Any) -> Study:
        """The study file at `path` (validated; one-line errors), with `storage` and any
        StudyConfig field in `overrides` (trials=, workers=, sampler=...) replaced."""
        from .search.config import load_study_config, with_overrides

        return cls(with_overrides(load_study_config(path), storage=storage, **overrides), progress)

    @classmethod
    def from_dict(cls, data: dict[str, Any], storage: str | None = None, base_dir: str | Path = ".",
                  progress: Progress = print) -> Study:
        """A study from the keys a study file holds, with the file's validation and errors;
        relative paths (space, storage, artifacts) and the default storage `<name>.journal` are
        relative to `base_dir`."""
        from .search.config import study_config_of, with_overrides

        name = data.get("name") if isinstance(data, dict) else None
        where = Path(base_dir) / f"{name if isinstance(name, str) and name else 'study'}.yaml"
        return cls(with_overrides(study_config_of(data, where, "study dict"), storage=storage),
                   progress)

    @property
    def name(self) -> str:
        """The search study's name (its siblings are name.baseline, name.confirm, ...)."""
        return self.config.name

    @property
    def storage(self) -> str:
        """The storage URL or journal path."""
        return self.config.storage

    def __repr__(self) -> str:
        return f"Study({self.name!r}, storage={self.storage!r})"

    # -- training: each resumes what is stored -------------------------------------------------

    def search(self, trials: int | None = None, workers: int | None = None,
               sampler: str | None = None, reproducible: bool | None = None,
               control: bool = False) -> dict[str, Any]:
        """Run or resume the search to `trials` in all (control: the random-sampler X.random)."""
        from .search.config import control_study_config, with_overrides
        from .search.study import run_search

        _at_least(1, trials=trials, workers=workers)
        if control and sampler:
            raise UserError("control: always uses the random sampler; drop sampler")
        cfg = with_overrides(self.config, trials=trials, workers=workers, sampler=sampler,
                             reproducible=reproducible)
        cfg = control_study_config(cfg) if control else cfg
        return self._run(lambda say: run_search(cfg, print_fn=say), cfg.name, cfg.trials)

    def join(self, trials: int | None = None, workers: int | None = None,
             sibling: str | None = None) -> dict[str, Any]:
        """Join a running study from this machine: the search, or sibling "baseline", "confirm"
        or "calibrate"; claim runs until its budget is used."""
        from .search.config import with_overrides
        from .search.study import join_study

        _at_least(1, trials=trials, workers=workers)
        if sibling not in (None, "baseline", "confirm", "calibrate"):
            raise UserError(f"sibling: must be baseline, confirm or calibrate, got {sibling!r}")
        cfg = with_overrides(self.config, trials=trials, workers=workers)
        return self._run(lambda say: join_study(
            cfg, print_fn=say, baseline=sibling == "baseline", confirm=sibling == "confirm",
            calibrate=sibling == "calibrate"), _sibling_name(cfg.name, sibling), None)

    def baselines(self, families: tuple[str, ...] | list[str] | None = None,
                  points: int | None = None, seeds: int | None = None,
                  workers: int | None = None) -> dict[str, Any]:
        """Train the width, depth, compound (and experts) baselines into X.baseline."""
        from .search.baselines import families_problem
        from .search.config import with_overrides
        from .search.study import run_baselines

        _at_least(1, points=points, seeds=seeds, workers=workers)
        changes: dict[str, Any] = {"points": points, "seeds": seeds}
        if families is not None:
            families = tuple(dict.fromkeys(families))
            if problem := families_problem(families):
                raise UserError(f"families: {problem}")
            changes["families"] = families
        cfg = with_overrides(self.config, workers=workers)
        cfg = dataclasses.replace(cfg, baselines=dataclasses.replace(
            cfg.baselines, **{k: v for k, v in changes.items() if v is not None}))
        return self._run(lambda say: run_baselines(cfg, print_fn=say),
                         _sibling_name(cfg.name, "baseline"), None)

    def confirm(self, seeds: int | None = None, workers: int | None = None) -> dict[str, Any]:
        """Retrain the front with `seeds` fresh seeds, and its matched-cost controls, into
        X.confirm, scored on the holdout split."""
        from .search.config import with_overrides
        from .search.study import run_confirm

        _at_least(1, workers=workers)
        _at_least(2, seeds=seeds)  # a mean needs its spread
        cfg = with_overrides(self.config, workers=workers, confirm_seeds=seeds)
        return self._run(lambda say: run_confirm(cfg, print_fn=say),
                         _sibling_name(cfg.name, "confirm"), None)

    def calibrate(self, archs: int | None = None, workers: int | None = None) -> dict[str, Any]:
        """Train the proxy-budget ladder into X.calibrate; the summary and its recommendation."""
        from .search.calibration import run_calibrate
        from .search.config import with_overrides

        _at_least(1, workers=workers)
        _at_least(4, archs=archs)  # a rank correlation needs them
        cfg = with_overrides(self.config, workers=workers)
        return self._run(lambda say: run_calibrate(cfg, archs, print_fn=say),
                         _sibling_name(cfg.name, "calibrate"), None)

    # -- reading: nothing is trained ----------------------------------------------------------

    def stored(self) -> StudyResults:
        """Everything stored of the study and its siblings (analysis.results.StudyResults)."""
        from .analysis.results import load_results
        from .search.match import adopt_stored_layout
        from .store.storage import open_storage

        cfg = adopt_stored_layout(self.config)
        return load_results(open_storage(cfg.storage, create=False), cfg.name, cfg.storage)

    def results(self) -> Results:
        """The runs as frames: search and control trials, baselines, confirmations, controls."""
        from .store.record import BASELINE_FAMILIES, SEARCH_FAMILIES

        raw = self.stored()
        conf = raw.confirmations
        is_control = conf.family.isin(BASELINE_FAMILIES) if len(conf) else conf.family.astype(bool)
        return Results(trials=raw.trials[raw.trials.family.isin(SEARCH_FAMILIES)].reset_index(drop=True),
                       baselines=raw.trials[~raw.trials.family.isin(SEARCH_FAMILIES)]
                       .reset_index(drop=True),
                       confirmations=conf[~is_control].reset_index(drop=True),
                       controls=conf[is_control].reset_index(drop=True), raw=raw)

    def headline(self) -> Headline:
        """The page's claims, typed (analysis.claims.Headline): per front and family a Claim
        with its method, split, interval and Holm p; the latency axis beside when measured."""
        from .analysis.headline import page_headline

        return page_headline(self.stored())

    def report(self, path: str | Path | None = None, stored: StudyResults | None = None
               ) -> Report:
        """Write the HTML report (and its CSVs); the paths and the headline the page makes
        (`stored`: the study's results when already read, see `stored()`)."""
        from .analysis.report import output_problem, write_report

        out = Path(path) if path is not None else Path("reports") / f"{self.name}.html"
        if problem := output_problem(out):
            raise UserError(f"{out}: {problem}")
        return write_report(stored if stored is not None else self.stored(), out)

    def export(self, pick: str = "best", out: str | Path | None = None, onnx: bool = False,
               retrain: int | None = None, device: str = "auto", untrained: bool = False,
               latency: bool = True, bar: bool = False) -> dict[str, Path]:
        """Write one architecture out (arch.json, weights, TorchScript, ONNX, model card).

        `pick`: best (the best confirmed holdout mean), knee, budget=30M or trial=N; `retrain`:
        first retrain it for that many epochs on the whole training split."""
        from .export import (
            check_weights,
            confirmed_summary,
            export_problem,
            export_trial,
            parse_pick,
            pick_trial,
            retrain_trial,
        )
        from .search.match import adopt_stored_layout

        if problem := export_problem(retrain, untrained, lambda name: name):
            raise UserError(problem)
        chosen = parse_pick(pick)
        results = self.stored()
        row = pick_trial(results, chosen)
        folder = Path(out) if out else Path("exports") / f"{self.name}-trial{int(row.number)}"
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder}: exists and is not a folder")
        if not retrain and not untrained:
            check_weights(results, row, self.config.artifacts)
        say = self._say()
        conf = confirmed_summary(results, int(row.number))
        told = (f"confirmed {conf['split']} acc {conf['mean']:.4f} over {conf['seeds']} seeds, "
                if conf else "")
        say(f"exporting trial {int(row.number)} of {self.name} ({pick}): {told}single-run val "
            f"acc {row.val_acc:.4f}, {int(row.madds):,} MAdds -> {folder}")
        model = retrained = None
        if retrain:
            model, retrained = retrain_trial(adopt_stored_layout(self.config), row, retrain, device,
                                             progress=bar)
            say(f"retrained {retrain} epochs on {retrained['train_images']} images: val "
                f"{retrained['val_acc']:.4f}, test {retrained['test_acc']:.4f}")
        if untrained:
            say("note: exported untrained (random weights), as untrained=True asked")
        return export_trial(results, row, folder, artifacts=self.config.artifacts, pick=chosen,
                            onnx=onnx, retrained=retrained, model=model, untrained=untrained,
                            latency=latency)

    # -- progress ------------------------------------------------------------------------------

    def _say(self) -> Callable[[str], None]:
        if self.progress is None or self.progress == "bar":
            return lambda line: None
        if callable(self.progress):
            return self.progress
        raise UserError(f"progress: must be a callable, 'bar' or None, got {self.progress!r}")

    def _run(self, job: Callable[[Callable[[str], None]], dict[str, Any]], name: str,
             total: int | None) -> dict[str, Any]:
        """Run `job` with progress lines to the callback, or under a bar fed from the storage."""
        if self.progress != "bar":
            return job(self._say())
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(self.storage, name, total, stop),
                                   daemon=True)
        watcher.start()
        try:
            return job(lambda line: None)
        finally:
            stop.set()
            watcher.join()


def _at_least(low: int, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or value < low):
            raise UserError(f"{name}: must be an integer >= {low}, got {value!r}")


def _sibling_name(name: str, sibling: str | None) -> str:
    from .store.siblings import Sibling

    return name if sibling is None else Sibling[sibling.upper()].of(name)


def _watch(storage: str, name: str, total: int | None, stop: threading.Event) -> None:
    """A tqdm bar over the finished runs of study `name`, read from its storage every second
    (workers may be other processes, so their lines never reach this one)."""
    import optuna
    from tqdm.auto import tqdm

    from .store.storage import open_storage, stale_numbers

    bar = tqdm(total=total, desc=name, unit="run")
    study = None  # opened once it exists; each read then takes in only what is new
    try:
        while True:
            try:
                if study is None:
                    study = optuna.load_study(study_name=name,
                                              storage=open_storage(storage, create=False))
                trials = study.get_trials(deepcopy=False)
                stale = stale_numbers(trials)
                live = [t for t in trials if t.number not in stale]
                done = sum(t.state.is_finished() for t in live)
                bar.total = total or len(live)  # siblings: every queued run
                bar.n = done
                bar.refresh()
            except (KeyError, UserError):
                pass  # not created yet
            if stop.is_set():
                break  # after one last read: the bar ends where the study does
            stop.wait(1.0)
    finally:
        bar.close()
