"""The Pareto report: one self-contained HTML page (plotly.js embedded once) plus CSV files.

Torch-free: everything here comes from the frames of `results.load_results`; the figures come
from `figures.py`, the claims from `claims.py`.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import UserError
from ..store.record import RANDOM, SEARCH_FAMILIES, copy_source
from . import pareto
from .calibration import ci_text, seed_line, verdict_line
from .claims import Headline
from .figures import FAMILY_LABELS, PLOT_CONFIG, build_figures
from .headline import axes_agree, page_headline
from .results import StudyResults

__all__ = ["Report", "ReportError", "build_figures", "output_problem",
           "render_html", "write_report"]


class ReportError(UserError):
    """A report that cannot be made; the message says why and what to run."""


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
    if kind in ("tau", "s"):
        return f"{value:.2f}" + (" s" if kind == "s" else "")
    if kind == "p":
        return f"{value:.3g}"
    if kind == "acc":
        return f"{value:.4f}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return html.escape(str(value))


def _interval(ci: Any) -> str:
    """'[lo, hi]' of a stored interval ('–' when absent or unknown)."""
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return "–"
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _families(done: pd.DataFrame) -> str:
    """Descriptive table per family: trials, front, hypervolume, MAdds range, seed std, slope."""
    s = pareto.summary(done)
    head = ("<tr><th class=l>family</th><th>trials</th><th>front</th><th>hypervolume</th>"
            "<th>MAdds range</th><th>seed std (median)</th><th>power-law slope of error</th></tr>")
    rows = [f"<tr><td class=l>{html.escape(r.family)}</td><td>{r.trials}</td><td>{r.front}</td>"
            f"<td>{_fmt(r.hypervolume)}</td><td>{_fmt(r.madds_lo, 'madds')}–"
            f"{_fmt(r.madds_hi, 'madds')}</td><td>{_fmt(r.seed_std)}</td><td>{_fmt(r.slope)}</td></tr>"
            for r in s.itertuples()]
    return f"<table id=families>{head}{''.join(rows)}</table>"


def _claims(head: Headline, cost: str = "MAdds", table_id: str = "headline") -> str:
    """The tested claims: per front and family, the mean paired holdout difference to its
    controls with its 95% CI, Holm p and verdict."""
    cols = ("<tr><th class=l>front</th><th class=l>against</th><th>points (units)</th>"
            f"<th class=l>controls</th><th>mean difference at matched {cost}</th><th>95% CI</th>"
            "<th>p (Holm)</th><th class=l>verdict</th>"
            f"<th>{cost} saved at matched accuracy (median)</th><th>seeds</th></tr>")
    rows = []
    for source, claims in head.sources.items():
        for family, c in claims.items():
            lo, hi = c.gain_ci95
            ci = "–" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}] pp"
            kind = ("matched" if c.matched == c.points else "bracketed" if c.matched == 0
                    else f"{c.matched} matched, {c.points - c.matched} bracketed")
            rows.append(f"<tr><td class=l>{html.escape(source)}</td><td class=l>"
                        f"{html.escape(family)}</td><td>{c.points} ({c.units})</td>"
                        f"<td class=l>{kind if c.points else '–'}</td>"
                        f"<td>{_fmt(c.gain_mean, 'pct')}</td><td>{ci}</td>"
                        f"<td>{_fmt(c.p_holm)}</td><td class=l>{html.escape(c.verdict)}</td>"
                        f"<td>{_fmt(c.madds_saved_median, 'share')}</td>"
                        f"<td>{','.join(map(str, c.seeds)) or '–'}</td></tr>")
    return f"<table id={table_id}>{cols}{''.join(rows)}</table>"


def _pairings(head: Headline) -> str:
    """Each front point against each family's control(s): what every claim averages."""
    rows = []
    for source, claims in head.sources.items():
        for family, c in claims.items():
            for p in c.per_point:
                costs = " / ".join(_fmt(m, "madds") for m in p["control_cost"])
                same = p["kind"] == "matched"
                rows.append(f"<tr><td class=l>{html.escape(source)}</td><td class=l>"
                            f"{html.escape(family)}</td><td class=l>{html.escape(p['point'])}</td>"
                            f"<td>{_fmt(p['cost'], 'madds')}</td><td class=l>{p['kind']}</td>"
                            f"<td>{costs}</td><td>{_fmt(p['d_gain'], 'pct')}</td>"
                            f"<td>{'=' if same else _fmt(p['d_loss'], 'pct')}</td></tr>")
    if not rows:
        return ""
    return ("<table class=sortable id=pairings><thead><tr><th class=l>front</th>"
            "<th class=l>against</th><th class=l>point</th><th>MAdds</th><th class=l>control</th>"
            "<th>control MAdds</th><th>difference (gain reading: the dearer control)</th>"
            "<th>difference (loss reading: the cheaper)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><p class=muted>Per point, the mean over "
            "shared seed indices of its holdout accuracy minus its control's: description, not "
            "a claim on its own.</p>")


def _axes_line(head: Headline, latency: Headline | None) -> str:
    """Under the headline: whether measured latency tells the same story as MAdds."""
    if latency is None:
        return ""
    same, changed = axes_agree(head, latency)
    if same:
        return ("<p><b>On measured latency the conclusion is the same</b> (see <a href=#latency>"
                "accuracy against measured latency</a>).</p>")
    return ("<p><b>On measured latency the conclusion changes:</b> "
            + html.escape("; ".join(changed)) + " (see <a href=#latency>accuracy against "
            "measured latency</a>).</p>")


def _latency_section(head: Headline, latency: Headline | None, figures: dict[str, str]) -> str:
    """Accuracy against measured latency: the figure, its claims and whether the axes agree."""
    if latency is None:
        return ""
    same, changed = axes_agree(head, latency)
    verdict = ("<b>The conclusion is the same on both axes.</b>" if same else
               "<b>The conclusion changes with the axis:</b> " + html.escape("; ".join(changed))
               + ".")
    return (f"<h2 id=latency>Accuracy against measured latency</h2><p>{verdict}</p>"
            f"{figures.get('latency', '')}{_claims(latency, 'latency', 'latency-headline')}"
            "<p class=muted>The same protocol as the headline with each architecture's measured "
            "inference latency (the median over its runs, see the manifest's measure settings) "
            "in place of MAdds: a control within 2% of a point's latency is matched, else the "
            "two that bracket it are read conservatively. These tests share the headline's one "
            "Holm step-down.</p>"
            f"<h2 id=latency_madds>Measured latency against MAdds</h2>"
            f"{figures.get('latency_madds', '')}<p class=muted>Where a family's points leave the "
            "others' trend, its cost in MAdds and in milliseconds part ways.</p>")


def _rungs(results: StudyResults) -> str:
    """Multi-fidelity searches: runs per rung, so every rung's results stay visible."""
    rungs = results.rungs
    if rungs.empty:
        return ""
    rows = "".join(
        f"<tr><td class=l>{html.escape(FAMILY_LABELS.get(r.family, r.family))}</td><td>{r.rung}</td>"
        f"<td>{_fmt(r.epochs)}</td><td>{r.runs}</td><td>{r.finished}</td>"
        f"<td>{_fmt(r.best_acc, 'acc')}</td></tr>" for r in rungs.itertuples())
    return ("<h2 id=rungs>Multi-fidelity rungs</h2><table class=sortable><thead><tr>"
            "<th class=l>family</th><th>rung</th><th>epochs</th><th>runs</th><th>finished</th>"
            f"<th>best val acc</th></tr></thead><tbody>{rows}</tbody></table>"
            "<p class=muted>Successive halving over epochs: an architecture is retrained at the "
            "next rung when it ranks in the top 1/eta of its rung (non-dominated sorting on "
            "accuracy and MAdds, crowding distance within a front). Fronts, claims, confirmation "
            "and export use the top rung only; every rung's runs are in the trials table.</p>")


def _calibration(summary: dict | None) -> str:
    """The calibration table under its figure."""
    if not summary:
        return ""
    rec = (summary.get("recommended") or {}).get("label")
    rows = "".join(
        f"<tr><td class=l>{html.escape(b['label'])}{' (recommended)' if b['label'] == rec else ''}"
        f"</td><td>{b['archs']}</td><td>{_fmt(b['tau'], 'tau')}</td>"
        f"<td>{html.escape(ci_text(b['tau_ci95']))}</td><td>{_fmt(b['p_value'], 'p')}"
        f"</td><td>{_fmt(b['tau_madds'], 'tau')}</td>"
        f"<td>{html.escape(ci_text(b['tau_gain_ci95']))}</td><td>{_fmt(b['tau_params'], 'tau')}"
        f"</td><td>{_fmt(b['seconds_per_arch'], 's')}</td>"
        f"<td>{'yes' if b['qualifies'] else 'no'}</td></tr>" for b in summary["budgets"])
    ref = summary["reference"]
    verdict = html.escape(verdict_line(summary)) + "."
    return ("<table class=sortable><thead><tr><th class=l>budget</th><th>architectures</th>"
            "<th>τ</th><th>τ 95%</th><th>p (τ &gt; 0)</th><th>τ MAdds</th><th>τ − τ MAdds 95%</th>"
            "<th>τ params</th><th>s / arch</th><th>qualifies</th></tr>"
            f"</thead><tbody>{rows}</tbody></table><p class=muted>Kendall τ of each budget's "
            f"validation accuracies with the reference's mean over its seeds ({ref['epochs']} "
            f"epochs x {ref['train_images'] or 'all'} images, "
            f"{_fmt(ref['seconds_per_arch'], 's')} an architecture) over the same architectures; "
            "intervals: paired bootstrap over the architectures. A budget qualifies with τ ≥ "
            f"{summary['min_tau']:g} over at least {summary['min_archs']} architectures, one-sided "
            "p below 0.05 and the interval of τ − τ MAdds above zero. "
            f"{verdict} {html.escape(seed_line(ref))}.</p>")


def _trial_table(trials: pd.DataFrame) -> str:
    cols = [("number", "#"), ("family", "family"), ("label", "point"), ("seed", "seed"),
            ("state", "state"), ("val_acc", "val acc"), ("madds", "MAdds"), ("params", "params"),
            ("seconds", "s"), ("latency_ms", "latency ms"), ("arch", "architecture"),
            ("fail_reason", "note")]
    left = ("family", "label", "state", "arch", "fail_reason")  # text columns, aligned left
    head = "".join(f"<th class=l>{t}</th>" if c in left else f"<th>{t}</th>" for c, t in cols)
    rows = []
    for r in trials.to_dict("records"):
        note = r["fail_reason"] or ("over budget" if not r["feasible"] else
                                    f"same as #{int(r['reused_from'])}"
                                    if pd.notna(r["reused_from"]) else
                                    f"copied from {copy_source(r['copied_from'])}"
                                    if r["copied_from"] else "")
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


def render_html(results: StudyResults, figures: dict[str, go.Figure], head: Headline | None = None
                ) -> str:
    """The whole page as one string: plotly.js once in the head, then each figure as a div."""
    from plotly.offline import get_plotlyjs

    done = results.finished
    head = head or page_headline(results)
    latency = head.latency
    families = set(done.family)
    notes = []
    if head.confirmed and not head.holdout:
        notes.append("<b>Not confirmed on a holdout split: no claim is made.</b> This study was "
                     "stored before holdout splits existed, so its confirmations are scored on "
                     "the validation split that selected the front: fresh seeds remove seed "
                     "luck, not the architectures' luck on those images. Run the study under a "
                     "new name for a verdict.")
    if not head.confirmed:
        notes.append("<b>Not confirmed: no claim is made.</b> The search front's points are "
                     "single runs, each the best of many, so their accuracy is inflated by the "
                     "selection. <code>condconv-nas confirm "
                     f"{html.escape(results.manifest.get('study_file') or 'studies/X.yaml')}"
                     "</code> retrains them with fresh seeds; the claims are made from those.")
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
                    f"architectures: <b>{_fmt(fid.get('tau'), 'tau')}</b> "
                    f"(95% bootstrap interval {_interval(fid.get('tau_ci95'))}; one-sided p = "
                    f"{_fmt(fid.get('p_value'), 'p')}); on the same architectures MAdds alone "
                    f"reach τ {_fmt(fid.get('tau_madds'), 'tau')} "
                    f"({_interval(fid.get('tau_madds_ci95'))}) and params alone "
                    f"{_fmt(fid.get('tau_params'), 'tau')}. "
                    f"{html.escape(str(fid.get('verdict', '')))}</p>")
    sections = {"pareto": "Accuracy against MAdds", "hypervolume": "Search progress",
                "placement": "Where CondConv went", "importance": "What mattered",
                "edf": "Error distributions", "calibration": "Proxy calibration"}
    extra = {"calibration": _calibration(results.calibration)}
    body, divs = [], {}
    for key, fig in figures.items():
        divs[key] = fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG,
                                div_id=f"fig-{key}")
        if key in ("latency", "latency_madds"):
            continue  # in their own section, with their claims
        body.append(f"<h2 id={key}>{sections.get(key, key)}</h2>{divs[key]}{extra.get(key, '')}")
    if latency is not None:
        body.insert(1, _latency_section(head, latency, divs))
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
manifest). Search front points are single runs (the best of many); confirmed points (diamonds)
are means over fresh seeds; baseline points are means over seeds with one standard deviation as
error bars.</p>
{''.join(f'<p class=note>{n}</p>' for n in notes)}
<h2 id=headline-table>Headline</h2>
{_claims(head)}
{_axes_line(head, latency)}
<p class=muted>Claims use the holdout split only, which no search trial, pruner or sampler saw.
Each confirmed front point (fresh seeds) is compared with controls of each baseline family
trained under the same seed indices at the point's own MAdds: one within 2% (matched), or the two
that bracket it, read conservatively (a gain only against the dearer, a loss only against the
cheaper). The front point is the unit of replication, as an architecture's luck on the holdout
images is shared by all its seeds: per point the mean paired difference over seeds, per family
a two-sided t-interval over points (df = points - 1; points sharing a control count as one), at
least 3 of them, every point in the family's range confirmed. One Holm step-down over every test
on this page (both fronts, every family, MAdds and latency axes) keeps the chance of any false
claim at or below 5%. The interpolated baseline curves in the figures describe; they enter no
claim. MAdds saved is descriptive, not tested.</p>
{_pairings(head)}
<h2 id=families-table>Families</h2>
{_families(done)}
<p class=muted>Hypervolume uses one reference point for all families, beyond the worst MAdds and
accuracy of all trials (log-MAdds and accuracy scaled to [0, 1]). The slope is that of log error
against log MAdds over the family's points (the search: its front).</p>
{fidelity}
{_rungs(results)}
{''.join(body)}
<h2 id=trials-table>All trials</h2>
<p class=muted>{len(results.trials)} trials; click a column to sort.</p>
{_trial_table(results.trials)}
<h2 id=manifest>Run manifest</h2>
<pre>{html.escape(manifest)}</pre>
<script type="text/javascript">{_SORT_JS}</script>
</body></html>
"""


def output_problem(out: Path) -> str | None:
    """What is wrong with `out` as the page's file (the caller names the argument), or None."""
    if out.suffix.lower() not in (".html", ".htm"):
        return "the report is an HTML file; give a name ending in .html"
    if out.is_dir():
        return f"is a folder; give a file name such as {out / out.name}"
    return None


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote (`paths`: html, trials_csv, fronts_csv) and the claims its page
    makes (`headline`), so that whoever prints or serialises them reads the page's own."""

    paths: dict[str, Path]
    headline: Headline


def write_report(results: StudyResults, out: str | Path) -> Report:
    """Write the HTML page and, beside it, `<name>.trials.csv` and `<name>.fronts.csv`; the
    headline is computed here once and returned with the paths."""
    if results.finished.empty:
        raise ReportError(f"study {results.name} has no finished trials yet; run "
                          "`condconv-nas search` (and `condconv-nas baselines`) first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = page_headline(results)
    latency = head.latency
    page = render_html(results, build_figures(results, head.front,
                                              latency.front if latency else None), head)
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
    return Report({"html": out, "trials_csv": trials_csv, "fronts_csv": fronts_csv}, head)
