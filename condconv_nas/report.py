"""The Pareto report: one self-contained HTML page (plotly.js embedded once) plus CSV files.

Torch-free: everything here comes from the frames of `results.load_results`. As in Optuna's plots,
`<name>_info` computes a figure's plain data (a frozen dataclass) and `<name>_plot` only draws it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import pareto
from .errors import UserError
from .record import BASELINE_FAMILIES, FAMILY_ORDER, RANDOM, SEARCH, SEARCH_FAMILIES
from .results import StudyResults, experts_by_block

__all__ = ["BaselineSeries", "Curve", "EdfInfo", "HypervolumeInfo", "ImportanceInfo", "ParetoInfo",
           "PlacementInfo", "ReportError", "TrialSeries", "build_figures", "edf_info", "edf_plot",
           "hypervolume_info", "hypervolume_plot", "importance_info", "importance_plot", "pareto_info",
           "pareto_plot", "placement_info", "placement_plot", "render_html", "write_report"]

# One colour per family, keyed in FAMILY_ORDER: the order of every legend, table and figure.
COLORS = dict(zip(FAMILY_ORDER, ("#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")))
FAMILY_LABELS = {RANDOM: "random control"}  # legend names that differ from the family's
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


class ReportError(UserError):
    """A report that cannot be made; the message says why and what to run."""


def _color(family: str) -> str:
    return COLORS.get(family, "#17becf")


def _ordered(families: Iterable[str], among: Iterable[str]) -> list[str]:
    """The distinct families that are in `among`: FAMILY_ORDER's in its order, then others sorted."""
    seen = set(families) & set(among)
    return [f for f in FAMILY_ORDER if f in seen] + sorted(seen - set(FAMILY_ORDER))


@dataclass(frozen=True)
class TrialSeries:
    """Trials of one search family as points: trial number, MAdds, accuracy and hover text each."""

    family: str
    number: tuple[int, ...]
    madds: tuple[int, ...]
    val_acc: tuple[float, ...]
    hover: tuple[str, ...]


@dataclass(frozen=True)
class BaselineSeries:
    """A baseline family's seed means by MAdds: multiplier, MAdds, mean and std accuracy, seeds."""

    family: str
    multiplier: tuple[float, ...]
    madds: tuple[int, ...]
    val_acc: tuple[float, ...]
    acc_std: tuple[float, ...]  # 0 where a point has one seed
    seeds: tuple[int, ...]
    hover: tuple[str, ...]


@dataclass(frozen=True)
class ParetoInfo:
    """The accuracy-MAdds figure's data: per search family all trials and its front; baselines."""

    trials: tuple[TrialSeries, ...]
    fronts: tuple[TrialSeries, ...]  # one per entry of `trials`, sorted by MAdds
    baselines: tuple[BaselineSeries, ...]
    budget: float | None


def pareto_info(done: pd.DataFrame, budget: float | None = None) -> ParetoInfo:
    """Every search trial and each search family's front, and each baseline's seed-mean curve."""
    trials: list[TrialSeries] = []
    fronts: list[TrialSeries] = []
    for family in _ordered(done.family, SEARCH_FAMILIES):
        sub = done[done.family == family]
        for out, df in ((trials, sub), (fronts, pareto.front(sub))):
            text = (f"#{int(r.number)} {html.escape(str(r.label or r.family))}<br>val acc {r.val_acc:.4f}"
                    f"<br>{r.madds / 1e6:.2f}M MAdds, {(r.params or 0) / 1e6:.2f}M params"
                    f"<br>{html.escape(str(r.arch))}" for r in df.itertuples())
            out.append(TrialSeries(family, tuple(map(int, df.number)), tuple(map(int, df.madds)),
                                   tuple(map(float, df.val_acc)), tuple(text)))
    baselines: list[BaselineSeries] = []
    for family in _ordered(done.family, BASELINE_FAMILIES):
        sub = done[done.family == family]
        means = pareto.seed_means(sub).sort_values("madds").fillna({"acc_std": 0.0})
        labels = sub.drop_duplicates("multiplier").set_index("multiplier").label
        hover = tuple(f"{html.escape(str(labels.get(r.multiplier, '')))}<br>val acc {r.val_acc:.4f} ± "
                      f"{r.acc_std:.4f} ({r.seeds} seeds)<br>{r.madds / 1e6:.2f}M MAdds"
                      for r in means.itertuples())
        baselines.append(BaselineSeries(family, tuple(map(float, means.multiplier)),
                                        tuple(map(int, means.madds)), tuple(map(float, means.val_acc)),
                                        tuple(map(float, means.acc_std)), tuple(map(int, means.seeds)),
                                        hover))
    return ParetoInfo(tuple(trials), tuple(fronts), tuple(baselines), budget)


def pareto_plot(info: ParetoInfo) -> go.Figure:
    """Accuracy against MAdds (log x): every trial, the fronts, baseline curves with seed bars."""
    fig = go.Figure()
    for every, front in zip(info.trials, info.fronts):
        family, name = every.family, FAMILY_LABELS.get(every.family, every.family)
        fig.add_trace(go.Scatter(x=np.asarray(every.madds), y=np.asarray(every.val_acc), mode="markers",
                                 name=f"{name}: all trials", legendgroup=family, hovertext=every.hover,
                                 hoverinfo="text",
                                 marker={"color": _color(family), "size": 6, "opacity": 0.35}))
        fig.add_trace(go.Scatter(x=np.asarray(front.madds), y=np.asarray(front.val_acc), mode="lines+markers",
                                 name=f"{name}: front", legendgroup=family, hovertext=front.hover,
                                 hoverinfo="text", line={"color": _color(family), "shape": "hv", "width": 2},
                                 marker={"size": 9}))
    for b in info.baselines:
        fig.add_trace(go.Scatter(x=np.asarray(b.madds), y=np.asarray(b.val_acc), mode="lines+markers",
                                 name=f"baseline: {b.family}", hovertext=b.hover, hoverinfo="text",
                                 line={"color": _color(b.family), "dash": "dot"},
                                 error_y={"type": "data", "array": np.asarray(b.acc_std), "visible": True}))
    if info.budget:
        fig.add_vline(x=info.budget, line={"color": "#444", "dash": "dash", "width": 1},
                      annotation_text="budget", annotation_position="top left")
    fig.update_layout(title="Validation accuracy against MAdds", xaxis_type="log",
                      xaxis_title="MAdds per image (log)", yaxis_title="validation accuracy",
                      hovermode="closest", height=560)
    return fig


@dataclass(frozen=True)
class Curve:
    """One family's line: x and y in drawing order (trial number and hypervolume; error and EDF)."""

    family: str
    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class HypervolumeInfo:
    """Hypervolume so far per search family, and one value per baseline family (one reference)."""

    histories: tuple[Curve, ...]  # x: trial number, y: hypervolume of the trials up to it
    baselines: tuple[tuple[str, float], ...]  # (family, hypervolume of its seed means)


def hypervolume_info(done: pd.DataFrame, norm: pareto.Normalisation) -> HypervolumeInfo:
    """Hypervolume histories of the search families and values of the others, all on `norm`."""
    history = {f: pareto.hypervolume_history(done[done.family == f], norm)
               for f in _ordered(done.family, SEARCH_FAMILIES)}
    baselines = _ordered(done.family, set(done.family) - set(SEARCH_FAMILIES))
    return HypervolumeInfo(tuple(Curve(f, tuple(map(int, h.number)), tuple(map(float, h.hypervolume)))
                                 for f, h in history.items()),
                           tuple((f, pareto.hypervolume(pareto.seed_means(done[done.family == f]), norm))
                                 for f in baselines))


def hypervolume_plot(info: HypervolumeInfo) -> go.Figure:
    """Hypervolume of the front so far against trial number; baselines as flat lines."""
    fig = go.Figure()
    for h in info.histories:
        fig.add_trace(go.Scatter(x=np.asarray(h.x), y=np.asarray(h.y), mode="lines",
                                 line={"color": _color(h.family), "shape": "hv"},
                                 name=FAMILY_LABELS.get(h.family, h.family)))
    for family, hv in info.baselines:
        fig.add_hline(y=hv, line={"color": _color(family), "dash": "dot", "width": 1},
                      annotation_text=f"{family} baseline", annotation_position="bottom right")
    fig.update_layout(title="Hypervolume against trial number (shared reference point)",
                      xaxis_title="trial number", yaxis_title="hypervolume", height=380)
    return fig


@dataclass(frozen=True)
class PlacementInfo:
    """Expert count of each block (rows) in each search front architecture (columns, by MAdds)."""

    number: tuple[int, ...]  # the front's trials, one per column
    madds: tuple[int, ...]
    val_acc: tuple[float, ...]
    blocks: tuple[str, ...]  # one per row, in network order
    experts: tuple[tuple[int | None, ...], ...]  # [row][column]; None: no such block there


def placement_info(done: pd.DataFrame) -> PlacementInfo:
    """The search front's architectures and the experts of every block that any of them has."""
    f = pareto.front(done[done.family == SEARCH])
    per_arch = [experts_by_block(json.loads(s) if s else None) for s in f.spec]
    blocks = sorted({name for arch in per_arch for name in arch},
                    key=lambda n: tuple(int(x) for x in n[1:].replace(".b", ".").split(".")))
    return PlacementInfo(tuple(map(int, f.number)), tuple(map(int, f.madds)), tuple(map(float, f.val_acc)),
                         tuple(blocks), tuple(tuple(arch.get(name) for arch in per_arch) for name in blocks))


def placement_plot(info: PlacementInfo) -> go.Figure:
    """Heatmap of expert counts: blocks down, front architectures across (0 static, blank absent)."""
    columns = [f"#{n} {m / 1e6:.2f}M {100 * a:.1f}%"
               for n, m, a in zip(info.number, info.madds, info.val_acc)]
    text = [["" if v is None else str(v) for v in row] for row in info.experts]
    fig = go.Figure(go.Heatmap(z=[list(row) for row in info.experts], x=columns, y=list(info.blocks),
                               text=text, texttemplate="%{text}", colorscale="YlOrRd", zmin=0,
                               colorbar={"title": "experts"},
                               hovertemplate="%{y} in %{x}: %{z} experts<extra></extra>"))
    fig.update_layout(title="CondConv placement on the search front (0: static block; blank: "
                      "block absent)", xaxis_title="front architecture (MAdds, val acc)",
                      yaxis={"autorange": "reversed", "title": "block"},
                      height=max(320, 22 * len(info.blocks) + 160))
    return fig


@dataclass(frozen=True)
class ImportanceInfo:
    """Search parameters and their importances, least important first."""

    params: tuple[str, ...]
    importance: tuple[float, ...]


def importance_info(importances: Mapping[str, float]) -> ImportanceInfo:
    """The importances sorted ascending (the bar chart draws the largest on top)."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    return ImportanceInfo(tuple(k for k, _ in items), tuple(float(v) for _, v in items))


def importance_plot(info: ImportanceInfo) -> go.Figure:
    """Importance of each search parameter for validation accuracy (Optuna's default evaluator)."""
    fig = go.Figure(go.Bar(x=list(info.importance), y=list(info.params), orientation="h",
                           marker={"color": COLORS[SEARCH]}))
    fig.update_layout(title="Parameter importance for validation error (Optuna's default "
                      "evaluator, PED-ANOVA in Optuna 5)",
                      xaxis_title="importance", height=max(300, 26 * len(info.params) + 140))
    return fig


@dataclass(frozen=True)
class EdfInfo:
    """The EDF of validation error of every family present, in FAMILY_ORDER."""

    series: tuple[Curve, ...]  # x: errors sorted ascending, y: (i + 1) / n


def edf_info(done: pd.DataFrame) -> EdfInfo:
    """Validation errors (1 - accuracy) per family, sorted, with their cumulative fractions."""
    errors = [(f, sorted(map(float, 1.0 - done[done.family == f].val_acc)))
              for f in _ordered(done.family, FAMILY_ORDER)]
    return EdfInfo(tuple(Curve(f, tuple(e), tuple((i + 1) / len(e) for i in range(len(e))))
                         for f, e in errors))


def edf_plot(info: EdfInfo) -> go.Figure:
    """Empirical distribution of validation error per family (Radosavovic et al. 2019)."""
    fig = go.Figure()
    for s in info.series:
        fig.add_trace(go.Scatter(x=list(s.x), y=list(s.y), mode="lines", name=f"{s.family} (n={len(s.x)})",
                                 line={"color": _color(s.family), "shape": "hv"}))
    fig.update_layout(title="EDF of validation error per family", xaxis_title="validation error",
                      yaxis_title="fraction of trials with error below", height=400)
    return fig


def build_figures(results: StudyResults) -> dict[str, go.Figure]:
    """Every figure of the report, keyed by section id (placement/importance only when they exist)."""
    done = results.finished
    figs = {"pareto": pareto_plot(pareto_info(done, results.manifest.get("budget_madds"))),
            "hypervolume": hypervolume_plot(hypervolume_info(done, pareto.normalisation(done)))}
    if any(experts_by_block(json.loads(s)) for s in done[done.family == SEARCH].spec if s):
        figs["placement"] = placement_plot(placement_info(done))
    if results.importances:
        figs["importance"] = importance_plot(importance_info(results.importances))
    figs["edf"] = edf_plot(edf_info(done))
    return figs


# --- the page ---------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;
padding:3px 7px;text-align:right}th{background:#f4f4f4;cursor:pointer;position:sticky;top:0}
td.l,th.l{text-align:left}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px}
.scroll{max-height:520px;overflow:auto}pre{background:#f6f6f6;padding:10px;overflow:auto;
font-size:12px}.muted{color:#666}
"""

# Click a header to sort the table by that column (numbers numerically); click again to reverse.
_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',
function(){var t=th.closest('table'),b=t.tBodies[0],
i=Array.prototype.indexOf.call(th.parentNode.children,th),d=th.dataset.dir==='asc'?-1:1;
th.dataset.dir=d===1?'asc':'desc';var rows=Array.prototype.slice.call(b.rows);
rows.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].textContent,
c=y.cells[i].dataset.v||y.cells[i].textContent,p=parseFloat(a),q=parseFloat(c);
if(!isNaN(p)&&!isNaN(q))return d*(p-q);return d*a.localeCompare(c);});
rows.forEach(function(r){b.appendChild(r);});});});
"""


def _fmt(value: Any, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:+.2f} pp"
    if kind == "share":
        return f"{100 * value:.1f}%"
    if kind == "madds":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _headline(done: pd.DataFrame) -> str:
    s = pareto.summary(done)
    head = ("<tr><th class=l>family</th><th>trials</th><th>front</th><th>hypervolume</th>"
            "<th>MAdds range</th><th>search gain at matched MAdds (mean / max)</th>"
            f"<th>gains beyond {pareto.NOISE_SIGMAS:g}σ seed noise</th>"
            "<th>MAdds saved at matched accuracy (median)</th><th>seed std (median)</th>"
            "<th>power-law slope of error</th></tr>")
    rows = []
    for r in s.itertuples():
        gain = "–" if r.family == SEARCH else f"{_fmt(r.gain_mean, 'pct')} / {_fmt(r.gain_max, 'pct')}"
        rows.append(f"<tr><td class=l>{html.escape(r.family)}</td><td>{r.trials}</td>"
                    f"<td>{r.front}</td><td>{_fmt(r.hypervolume)}</td>"
                    f"<td>{_fmt(r.madds_lo, 'madds')}–{_fmt(r.madds_hi, 'madds')}</td>"
                    f"<td>{gain}</td><td>{_fmt(r.beyond_noise if r.family != SEARCH else None)}"
                    f"</td><td>{_fmt(r.saved_median, 'share')}</td><td>{_fmt(r.seed_std)}</td>"
                    f"<td>{_fmt(r.slope)}</td></tr>")
    return f"<table id=headline>{head}{''.join(rows)}</table>"


def _trial_table(trials: pd.DataFrame) -> str:
    cols = [("number", "#"), ("family", "family"), ("label", "point"), ("seed", "seed"),
            ("state", "state"), ("val_acc", "val acc"), ("madds", "MAdds"), ("params", "params"),
            ("seconds", "s"), ("arch", "architecture"), ("fail_reason", "note")]
    left = ("family", "label", "state", "arch", "fail_reason")  # text columns, aligned left
    head = "".join(f"<th class=l>{t}</th>" if c in left else f"<th>{t}</th>" for c, t in cols)
    rows = []
    for r in trials.to_dict("records"):
        note = r["fail_reason"] or ("over budget" if not r["feasible"] else
                                    f"same as #{int(r['reused_from'])}"
                                    if pd.notna(r["reused_from"]) else "")
        cells = []
        for c, _ in cols:
            v = note if c == "fail_reason" else r[c]
            if c == "madds" or c == "params":
                cells.append(f"<td data-v='{v}'>{_fmt(v, 'madds')}</td>")
            elif c in left:
                cells.append(f"<td class=l>{_fmt(v)}</td>")
            else:
                cells.append(f"<td>{_fmt(v)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<div class=scroll><table class=sortable id=trials><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def render_html(results: StudyResults, figures: dict[str, go.Figure]) -> str:
    """The whole page as one string: plotly.js once in the head, then each figure as a div."""
    from plotly.offline import get_plotlyjs

    done = results.finished
    families = set(done.family)
    notes = []
    if not families - set(SEARCH_FAMILIES):
        notes.append("No baselines are stored for this study, so there is nothing to compare the "
                     "search with. The comparison needs <code>condconv-nas baselines "
                     f"{html.escape(results.manifest.get('study_file') or 'studies/X.yaml')}"
                     "</code>.")
    if RANDOM not in families:
        notes.append("No random-sampler control: <code>condconv-nas search STUDY --control</code> "
                     "runs one into the sibling study X.random.")
    fid, fidelity = results.fidelity, ""
    if fid:
        fidelity = (f"<h2 id=fidelity>Proxy fidelity</h2><p>Kendall τ between proxy and "
                    f"{fid.get('epochs', '?')}-epoch accuracy over {fid.get('n', '?')} "
                    f"architectures: <b>{fid.get('tau', float('nan')):.3f}</b> "
                    f"(p = {fid.get('p_value', float('nan')):.3g}). "
                    f"{html.escape(str(fid.get('verdict', '')))}</p>")
    sections = {"pareto": "Accuracy against MAdds", "hypervolume": "Search progress",
                "placement": "Where CondConv went", "importance": "What mattered",
                "edf": "Error distributions"}
    body = []
    for key, fig in figures.items():
        div = fig.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG, div_id=f"fig-{key}")
        body.append(f"<h2 id={key}>{sections.get(key, key)}</h2>{div}")
    manifest = json.dumps(results.manifest, indent=2, sort_keys=True, default=str)
    title = f"condconv-nas report: {html.escape(results.name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{title}</h1>
<p class=muted>Studies {html.escape(', '.join(results.studies))} in {html.escape(results.storage)}.
Accuracy is validation accuracy of the proxy recipe; MAdds per image at inference (see the
manifest). Search front points are single runs (the best of many); baseline points are means over
seeds with one standard deviation as error bars.</p>
{''.join(f'<p class=note>{n}</p>' for n in notes)}
<h2 id=headline-table>Headline</h2>
{_headline(done)}
<p class=muted>Gains compare the search front with each family's front, interpolated on log-MAdds,
only inside the family's MAdds range; MAdds saved compare only inside its accuracy range; a dash
means no search front point falls in that range. Hypervolume uses one reference point for all
families (worst MAdds and accuracy of all trials; log-MAdds and accuracy scaled to [0, 1]).
The slope is that of log error against log MAdds over the family's points (the search: its
front).</p>
{fidelity}
{''.join(body)}
<h2 id=trials-table>All trials</h2>
<p class=muted>{len(results.trials)} trials; click a column to sort.</p>
{_trial_table(results.trials)}
<h2 id=manifest>Run manifest</h2>
<pre>{html.escape(manifest)}</pre>
<script type="text/javascript">{_SORT_JS}</script>
</body></html>
"""


def write_report(results: StudyResults, out: str | Path) -> dict[str, Path]:
    """Write the HTML page and, beside it, `<name>.trials.csv` and `<name>.fronts.csv`."""
    if results.finished.empty:
        raise ReportError(f"study {results.name} has no finished trials yet; run "
                          "`condconv-nas search` (and `condconv-nas baselines`) first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(results, build_figures(results))
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a page
    stem = out.with_suffix("")
    trials_csv, fronts_csv = Path(f"{stem}.trials.csv"), Path(f"{stem}.fronts.csv")
    results.trials.to_csv(trials_csv, index=False)
    done = results.finished
    fronts = []
    for family in sorted(set(done.family)):
        sub = done[done.family == family]
        points = sub if family in SEARCH_FAMILIES else pareto.seed_means(sub)
        fronts.append(pareto.front(points).assign(family=family))
    pd.concat(fronts, ignore_index=True).to_csv(fronts_csv, index=False)
    return {"html": out, "trials_csv": trials_csv, "fronts_csv": fronts_csv}
