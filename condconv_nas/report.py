"""The Pareto report: one self-contained HTML page (plotly.js embedded once) plus CSV files.

Torch-free: everything here comes from the frames of `results.load_results`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from . import pareto
from .results import StudyResults, experts_by_block

__all__ = ["ReportError", "build_figures", "render_html", "write_report"]

COLORS = {"search": "#d62728", "random": "#7f7f7f", "width": "#1f77b4", "depth": "#2ca02c",
          "compound": "#9467bd", "experts": "#ff7f0e"}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


class ReportError(Exception):
    """A report that cannot be made; the message says why and what to run."""


def _color(family: str) -> str:
    return COLORS.get(family, "#17becf")


def _hover(df: pd.DataFrame) -> list[str]:
    return [f"#{int(r.number)} {html.escape(str(r.label or r.family))}<br>val acc {r.val_acc:.4f}"
            f"<br>{r.madds / 1e6:.2f}M MAdds, {(r.params or 0) / 1e6:.2f}M params"
            f"<br>{html.escape(str(r.arch))}" for r in df.itertuples()]


def fig_pareto(done: pd.DataFrame, budget: float | None) -> go.Figure:
    """Accuracy against MAdds (log x): every trial, the fronts, baseline curves with seed bars."""
    fig = go.Figure()
    for family in ("search", "random"):
        sub = done[done.family == family]
        if sub.empty:
            continue
        name = "search" if family == "search" else "random control"
        fig.add_trace(go.Scatter(x=sub.madds, y=sub.val_acc, mode="markers",
                                 name=f"{name}: all trials", legendgroup=family,
                                 marker={"color": _color(family), "size": 6, "opacity": 0.35},
                                 hovertext=_hover(sub), hoverinfo="text"))
        f = pareto.front(sub)
        fig.add_trace(go.Scatter(x=f.madds, y=f.val_acc, mode="lines+markers",
                                 name=f"{name}: front", legendgroup=family,
                                 line={"color": _color(family), "shape": "hv", "width": 2},
                                 marker={"size": 9}, hovertext=_hover(f), hoverinfo="text"))
    base = done[~done.family.isin(["search", "random"])]
    for family in [f for f in ("width", "depth", "compound", "experts") if f in set(base.family)]:
        sub = base[base.family == family]
        means = pareto.seed_means(sub).sort_values("madds")
        labels = sub.drop_duplicates("multiplier").set_index("multiplier").label
        text = [f"{html.escape(str(labels.get(m, '')))}<br>val acc {a:.4f} ± {s:.4f} "
                f"({n} seeds)<br>{md / 1e6:.2f}M MAdds"
                for m, a, s, n, md in zip(means.multiplier, means.val_acc,
                                          means.acc_std.fillna(0), means.seeds, means.madds)]
        fig.add_trace(go.Scatter(x=means.madds, y=means.val_acc, mode="lines+markers",
                                 name=f"baseline: {family}", line={"color": _color(family),
                                                                   "dash": "dot"},
                                 error_y={"type": "data", "array": means.acc_std.fillna(0),
                                          "visible": True},
                                 hovertext=text, hoverinfo="text"))
    if budget:
        fig.add_vline(x=budget, line={"color": "#444", "dash": "dash", "width": 1},
                      annotation_text="budget", annotation_position="top left")
    fig.update_layout(title="Validation accuracy against MAdds", xaxis_type="log",
                      xaxis_title="MAdds per image (log)", yaxis_title="validation accuracy",
                      hovermode="closest", height=560)
    return fig


def fig_hypervolume(done: pd.DataFrame, norm: pareto.Normalisation) -> go.Figure:
    """Hypervolume of the front so far against trial number; baselines as flat lines."""
    fig = go.Figure()
    for family in ("search", "random"):
        sub = done[done.family == family]
        if sub.empty:
            continue
        h = pareto.hypervolume_history(sub, norm)
        fig.add_trace(go.Scatter(x=h.number, y=h.hypervolume, mode="lines",
                                 line={"color": _color(family), "shape": "hv"},
                                 name="search" if family == "search" else "random control"))
    base = done[~done.family.isin(["search", "random"])]
    for family in sorted(set(base.family)):
        hv = pareto.hypervolume(pareto.seed_means(base[base.family == family]), norm)
        fig.add_hline(y=hv, line={"color": _color(family), "dash": "dot", "width": 1},
                      annotation_text=f"{family} baseline", annotation_position="bottom right")
    fig.update_layout(title="Hypervolume against trial number (shared reference point)",
                      xaxis_title="trial number", yaxis_title="hypervolume", height=380)
    return fig


def fig_placement(done: pd.DataFrame) -> go.Figure:
    """Expert counts of every block (rows) in each search front architecture (columns)."""
    f = pareto.front(done[done.family == "search"])
    columns = [f"#{int(r.number)} {r.madds / 1e6:.2f}M {100 * r.val_acc:.1f}%"
               for r in f.itertuples()]
    per_arch = [experts_by_block(json.loads(s) if s else None) for s in f.spec]
    order: list[str] = []
    for blocks in per_arch:
        for name in blocks:
            if name not in order:
                order.append(name)
    order.sort(key=lambda n: tuple(int(x) for x in n[1:].replace(".b", ".").split(".")))
    z = [[blocks.get(name) for blocks in per_arch] for name in order]
    text = [["" if v is None else str(v) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=order, text=text, texttemplate="%{text}",
                               colorscale="YlOrRd", zmin=0, colorbar={"title": "experts"},
                               hovertemplate="%{y} in %{x}: %{z} experts<extra></extra>"))
    fig.update_layout(title="CondConv placement on the search front (0: static block; blank: "
                      "block absent)", xaxis_title="front architecture (MAdds, val acc)",
                      yaxis={"autorange": "reversed", "title": "block"},
                      height=max(320, 22 * len(order) + 160))
    return fig


def fig_importance(importances: dict[str, float]) -> go.Figure:
    """Importance of each search parameter for validation accuracy (Optuna's default evaluator)."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker={"color": COLORS["search"]}))
    fig.update_layout(title="Parameter importance for validation error (Optuna's default "
                      "evaluator, PED-ANOVA in Optuna 5)",
                      xaxis_title="importance", height=max(300, 26 * len(items) + 140))
    return fig


def fig_edf(done: pd.DataFrame) -> go.Figure:
    """Empirical distribution of validation error per family (Radosavovic et al. 2019)."""
    fig = go.Figure()
    for family in [f for f in COLORS if f in set(done.family)]:
        err = sorted(1.0 - done[done.family == family].val_acc)
        n = len(err)
        fig.add_trace(go.Scatter(x=err, y=[(i + 1) / n for i in range(n)], mode="lines",
                                 line={"color": _color(family), "shape": "hv"},
                                 name=f"{family} (n={n})"))
    fig.update_layout(title="EDF of validation error per family", xaxis_title="validation error",
                      yaxis_title="fraction of trials with error below", height=400)
    return fig


def build_figures(results: StudyResults) -> dict[str, go.Figure]:
    """Every figure of the report, keyed by section id (placement/importance only when they exist)."""
    done = results.finished
    norm = pareto.normalisation(done)
    figs = {"pareto": fig_pareto(done, results.manifest.get("budget_madds")),
            "hypervolume": fig_hypervolume(done, norm)}
    if (done.family == "search").any() and any(
            experts_by_block(json.loads(s)) for s in done[done.family == "search"].spec if s):
        figs["placement"] = fig_placement(done)
    if results.importances:
        figs["importance"] = fig_importance(results.importances)
    figs["edf"] = fig_edf(done)
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
        gain = ("–" if r.family == "search" else
                f"{_fmt(r.gain_mean, 'pct')} / {_fmt(r.gain_max, 'pct')}")
        rows.append(f"<tr><td class=l>{html.escape(r.family)}</td><td>{r.trials}</td>"
                    f"<td>{r.front}</td><td>{_fmt(r.hypervolume)}</td>"
                    f"<td>{_fmt(r.madds_lo, 'madds')}–{_fmt(r.madds_hi, 'madds')}</td>"
                    f"<td>{gain}</td><td>{_fmt(r.beyond_noise if r.family != 'search' else None)}"
                    f"</td><td>{_fmt(r.saved_median, 'share')}</td><td>{_fmt(r.seed_std)}</td>"
                    f"<td>{_fmt(r.slope)}</td></tr>")
    return f"<table id=headline>{head}{''.join(rows)}</table>"


def _trial_table(trials: pd.DataFrame) -> str:
    cols = [("number", "#"), ("family", "family"), ("label", "point"), ("seed", "seed"),
            ("state", "state"), ("val_acc", "val acc"), ("madds", "MAdds"), ("params", "params"),
            ("seconds", "s"), ("arch", "architecture"), ("fail_reason", "note")]
    head = "".join(f"<th class=l>{t}</th>" if c in ("family", "label", "state", "arch",
                                                     "fail_reason") else f"<th>{t}</th>"
                   for c, t in cols)
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
            elif c in ("family", "label", "state", "arch", "fail_reason"):
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
    if not families - {"search", "random"}:
        notes.append("No baselines are stored for this study, so there is nothing to compare the "
                     "search with. The comparison needs <code>condconv-nas baselines "
                     f"{html.escape(results.manifest.get('study_file') or 'studies/X.yaml')}"
                     "</code>.")
    if "random" not in families:
        notes.append("No random-sampler control: <code>condconv-nas search STUDY --control</code> "
                     "runs one into the sibling study X.random.")
    fid = results.fidelity
    fidelity = ""
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
        div = fig.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG,
                          div_id=f"fig-{key}")
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
        points = sub if family in ("search", "random") else pareto.seed_means(sub)
        fronts.append(pareto.front(points).assign(family=family))
    pd.concat(fronts, ignore_index=True).to_csv(fronts_csv, index=False)
    return {"html": out, "trials_csv": trials_csv, "fronts_csv": fronts_csv}
