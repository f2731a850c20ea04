"""The report's figures: `<name>_info` computes a figure's plain data, `<name>_plot` draws it.

As in Optuna's plots, each info is a frozen dataclass that tests check without parsing HTML.
Torch-free: everything comes from the frames of `results.load_results`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..store.record import BASELINE_FAMILIES, FAMILY_ORDER, RANDOM, SEARCH, SEARCH_FAMILIES
from . import pareto
from .results import StudyResults, experts_by_block

__all__ = ["BaselineSeries", "COLORS", "CalibrationInfo", "ConfirmedSeries", "CostSeries", "Curve",
           "EdfInfo", "latency_madds_info", "latency_madds_plot",
           "HypervolumeInfo", "ImportanceInfo", "PLOT_CONFIG", "ParetoInfo", "PlacementInfo",
           "TrialSeries", "build_figures", "calibration_info", "calibration_plot",
           "confirmed_info", "edf_info", "edf_plot", "hypervolume_info", "hypervolume_plot",
           "importance_info", "importance_plot", "pareto_info", "pareto_plot", "placement_info",
           "placement_plot"]

# One colour per family, keyed in FAMILY_ORDER: the order of every legend, table and figure.
COLORS = dict(zip(FAMILY_ORDER, ("#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")))
FAMILY_LABELS = {RANDOM: "random control"}  # legend names that differ from the family's
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


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
    madds: tuple[float, ...]  # or latency in ms on the latency axis
    val_acc: tuple[float, ...]
    hover: tuple[str, ...]


@dataclass(frozen=True)
class BaselineSeries:
    """A baseline family's seed means by MAdds: multiplier, MAdds, mean and std accuracy, seeds."""

    family: str
    multiplier: tuple[float, ...]
    madds: tuple[float, ...]
    val_acc: tuple[float, ...]
    acc_std: tuple[float, ...]  # 0 where a point has one seed
    seeds: tuple[int, ...]
    hover: tuple[str, ...]


@dataclass(frozen=True)
class ConfirmedSeries:
    """A search family's front points retrained with fresh seeds (mean, std) or not yet."""

    family: str
    number: tuple[int, ...]
    madds: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seeds: tuple[int, ...]
    unconfirmed: tuple[tuple[float, float], ...]  # (MAdds, single-run accuracy) of the rest


@dataclass(frozen=True)
class ParetoInfo:
    """The accuracy-MAdds figure's data: per search family all trials and its front; baselines."""

    trials: tuple[TrialSeries, ...]
    fronts: tuple[TrialSeries, ...]  # one per entry of `trials`, sorted by MAdds
    baselines: tuple[BaselineSeries, ...]
    budget: float | None
    confirmed: tuple[ConfirmedSeries, ...] = ()
    axis: str = "madds"  # or "latency": the cost column holds measured ms (pareto.latency_axis)


def _cost(value: float, axis: str) -> str:
    return f"{value:.3f} ms" if axis == "latency" else f"{value / 1e6:.2f}M MAdds"


def confirmed_info(front_status: dict[str, list[dict]]) -> tuple[ConfirmedSeries, ...]:
    """Per search family, its front points' confirmed means, and the points not yet confirmed."""
    out = []
    for family in _ordered(front_status, SEARCH_FAMILIES):
        done = [p for p in front_status[family] if p["seeds"]]
        out.append(ConfirmedSeries(
            family, tuple(p["number"] for p in done), tuple(p["madds"] for p in done),
            tuple(p["confirmed_acc"] for p in done), tuple(p["confirmed_std"] or 0.0 for p in done),
            tuple(p["seeds"] for p in done),
            tuple((p["madds"], p["single_run_acc"]) for p in front_status[family] if not p["seeds"])))
    return tuple(out)


def pareto_info(done: pd.DataFrame, budget: float | None = None,
                front_status: dict[str, list[dict]] | None = None,
                axis: str = "madds") -> ParetoInfo:
    """Every search trial and each search family's front, and each baseline's seed-mean curve.

    With `axis` "latency", `done` comes from pareto.latency_axis: its cost column is in ms.
    """
    trials: list[TrialSeries] = []
    fronts: list[TrialSeries] = []
    for family in _ordered(done.family, SEARCH_FAMILIES):
        sub = done[done.family == family]
        for out, df in ((trials, sub), (fronts, pareto.front(sub))):
            text = (f"#{int(r.number)} {html.escape(str(r.label or r.family))}<br>val acc {r.val_acc:.4f}"
                    f"<br>{_cost(r.madds, axis)}, {(r.params or 0) / 1e6:.2f}M params"
                    f"<br>{html.escape(str(r.arch))}" for r in df.itertuples())
            out.append(TrialSeries(family, tuple(map(int, df.number)), tuple(map(float, df.madds)),
                                   tuple(map(float, df.val_acc)), tuple(text)))
    baselines: list[BaselineSeries] = []
    for family in _ordered(done.family, BASELINE_FAMILIES):
        sub = done[done.family == family]
        means = pareto.seed_means(sub).sort_values("madds").fillna({"acc_std": 0.0})
        labels = sub.drop_duplicates("multiplier").set_index("multiplier").label
        hover = tuple(f"{html.escape(str(labels.get(r.multiplier, '')))}<br>val acc {r.val_acc:.4f} ± "
                      f"{r.acc_std:.4f} ({r.seeds} seeds)<br>{_cost(r.madds, axis)}"
                      for r in means.itertuples())
        baselines.append(BaselineSeries(family, tuple(map(float, means.multiplier)),
                                        tuple(map(float, means.madds)), tuple(map(float, means.val_acc)),
                                        tuple(map(float, means.acc_std)), tuple(map(int, means.seeds)),
                                        hover))
    return ParetoInfo(tuple(trials), tuple(fronts), tuple(baselines), budget,
                      confirmed_info(front_status or {}), axis)


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
                                 name=f"{name}: front (single runs)", legendgroup=family,
                                 hovertext=front.hover,
                                 hoverinfo="text", line={"color": _color(family), "shape": "hv", "width": 2},
                                 marker={"size": 9}))
    for c in info.confirmed:
        name = FAMILY_LABELS.get(c.family, c.family)
        fig.add_trace(go.Scatter(
            x=np.asarray(c.madds), y=np.asarray(c.mean), mode="markers", legendgroup=c.family,
            name=f"{name}: confirmed mean ± std (fresh seeds)",
            marker={"color": _color(c.family), "size": 12, "symbol": "diamond"},
            error_y={"type": "data", "array": np.asarray(c.std), "visible": True},
            hovertext=[f"#{n} confirmed: {m:.4f} ± {s:.4f} ({k} seeds)" for n, m, s, k in
                       zip(c.number, c.mean, c.std, c.seeds)], hoverinfo="text"))
        if c.unconfirmed:
            fig.add_trace(go.Scatter(
                x=[m for m, _ in c.unconfirmed], y=[a for _, a in c.unconfirmed], mode="markers",
                legendgroup=c.family, name=f"{name}: selected, not confirmed",
                marker={"color": _color(c.family), "size": 12, "symbol": "circle-open"},
                hoverinfo="x+y"))
    for b in info.baselines:
        fig.add_trace(go.Scatter(x=np.asarray(b.madds), y=np.asarray(b.val_acc), mode="lines+markers",
                                 name=f"baseline: {b.family}", hovertext=b.hover, hoverinfo="text",
                                 line={"color": _color(b.family), "dash": "dot"},
                                 error_y={"type": "data", "array": np.asarray(b.acc_std), "visible": True}))
    if info.budget and info.axis == "madds":
        fig.add_vline(x=info.budget, line={"color": "#444", "dash": "dash", "width": 1},
                      annotation_text="budget", annotation_position="top left")
    latency = info.axis == "latency"
    fig.update_layout(title="Validation accuracy against " + ("measured latency" if latency
                                                              else "MAdds"),
                      xaxis_type="log", xaxis_title=("latency, ms (log)" if latency
                                                     else "MAdds per image (log)"),
                      yaxis_title="validation accuracy", hovermode="closest", height=560)
    return fig


@dataclass(frozen=True)
class CostSeries:
    """One family's architectures: counted MAdds against measured latency (median over seeds)."""

    family: str
    madds: tuple[float, ...]
    latency_ms: tuple[float, ...]
    hover: tuple[str, ...]


def latency_madds_info(done_latency: pd.DataFrame) -> tuple[CostSeries, ...]:
    """Per family, each measured architecture once (frames from pareto.latency_axis)."""
    out = []
    for family in _ordered(done_latency.family, FAMILY_ORDER):
        sub = done_latency[done_latency.family == family]
        sub = sub.drop_duplicates(subset=["madds_count", "madds"]).sort_values("madds_count")
        out.append(CostSeries(family, tuple(map(float, sub.madds_count)), tuple(map(float, sub.madds)),
                              tuple(f"{html.escape(str(r.label or r.arch))}<br>{r.madds_count / 1e6:.2f}M "
                                    f"MAdds, {r.madds:.3f} ms" for r in sub.itertuples())))
    return tuple(out)


def latency_madds_plot(info: tuple[CostSeries, ...]) -> go.Figure:
    """Measured latency against counted MAdds (log-log), one colour per family."""
    fig = go.Figure()
    for c in info:
        fig.add_trace(go.Scatter(x=np.asarray(c.madds), y=np.asarray(c.latency_ms), mode="markers",
                                 name=FAMILY_LABELS.get(c.family, c.family), hovertext=c.hover,
                                 hoverinfo="text", marker={"color": _color(c.family), "size": 8}))
    fig.update_layout(title="Measured latency against MAdds", xaxis_type="log", yaxis_type="log",
                      xaxis_title="MAdds per image (log)", yaxis_title="latency, ms (log)",
                      hovermode="closest", height=460)
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


@dataclass(frozen=True)
class CalibrationInfo:
    """Each ladder budget's training seconds an architecture and Kendall tau with the reference
    (with its bootstrap 95% interval)."""

    labels: tuple[str, ...]
    seconds: tuple[float, ...]
    tau: tuple[float, ...]
    tau_madds: float  # on the architectures of the most complete budget
    tau_params: float
    min_tau: float
    recommended: str | None
    tau_ci95: tuple[tuple[float, float], ...] = ()  # per budget; empty: no error bars


def calibration_info(summary: Mapping[str, Any]) -> CalibrationInfo:
    """The calibration summary's budgets that have a tau, for the tau-against-cost figure."""
    budgets = [b for b in summary["budgets"] if b["tau"] == b["tau"]]
    widest = max(budgets, key=lambda b: b["archs"], default={})
    rec = summary.get("recommended")
    return CalibrationInfo(tuple(b["label"] for b in budgets),
                           tuple(float(b["seconds_per_arch"]) for b in budgets),
                           tuple(float(b["tau"]) for b in budgets),
                           float(widest.get("tau_madds", math.nan)),
                           float(widest.get("tau_params", math.nan)),
                           float(summary["min_tau"]), rec["label"] if rec else None,
                           tuple((float(b["tau_ci95"][0]), float(b["tau_ci95"][1]))
                                 for b in budgets))


def calibration_plot(info: CalibrationInfo) -> go.Figure:
    """Kendall tau with the reference against training seconds an architecture, per budget."""
    fig = go.Figure()
    colors = ["#d62728" if label == info.recommended else "#1f77b4" for label in info.labels]
    bars = ({"type": "data", "symmetric": False,
             "array": [hi - t for t, (_, hi) in zip(info.tau, info.tau_ci95)],
             "arrayminus": [t - lo for t, (lo, _) in zip(info.tau, info.tau_ci95)],
             "color": "#9ecae1"} if info.tau_ci95 else None)  # bootstrap 95% intervals
    fig.add_trace(go.Scatter(x=list(info.seconds), y=list(info.tau), mode="markers+text",
                             error_y=bars,
                             text=list(info.labels), textposition="top center",
                             marker={"size": 10, "color": colors}, name="proxy budget",
                             hovertemplate="%{text}<br>%{x:.1f} s an architecture"
                                           "<br>tau %{y:.2f}<extra></extra>"))
    lines = sorted((y, text, dash) for y, text, dash in (
        (info.min_tau, f"tau wanted ({info.min_tau:g})", "dash"),
        (info.tau_madds, f"MAdds alone ({info.tau_madds:.2f})", "dot"),
        (info.tau_params, f"params alone ({info.tau_params:.2f})", "dashdot")) if y == y)
    labels: dict[int, list[str]] = {}  # lines closer than a label's height share one label,
    for i, (y, text, _) in enumerate(lines):  # under the lowest of them
        low = next((j for j in labels if y - lines[j][0] < 0.15), i)
        labels.setdefault(low, []).append(text)
    for i, (y, _, dash) in enumerate(lines):
        label = ({"annotation_text": ", ".join(labels[i]), "annotation_position": "bottom right"}
                 if i in labels else {})
        fig.add_hline(y=y, line={"color": "#7f7f7f", "dash": dash, "width": 1}, **label)
    fig.update_layout(title="Proxy budgets: rank agreement with the reference against cost"
                      + (f" (recommended: {info.recommended})" if info.recommended else ""),
                      xaxis={"title": "training seconds an architecture", "type": "log"},
                      yaxis={"title": "Kendall tau with the reference", "range": [-1.05, 1.1]},
                      height=420, showlegend=False)
    return fig


def build_figures(results: StudyResults, front_status: dict[str, list[dict]] | None = None,
                  latency_status: dict[str, list[dict]] | None = None) -> dict[str, go.Figure]:
    """Every figure of the report, keyed by section id (placement/importance only when they exist).

    `front_status` (claims.study_headline's "front") adds the confirmed means to the Pareto plot;
    `latency_status` does so on the latency axis (shown when latency was measured).
    """
    done = results.finished
    figs = {"pareto": pareto_plot(pareto_info(done, results.manifest.get("budget_madds"),
                                              front_status)),
            "hypervolume": hypervolume_plot(hypervolume_info(done, pareto.normalisation(done)))}
    if any(experts_by_block(json.loads(s)) for s in done[done.family == SEARCH].spec if s):
        figs["placement"] = placement_plot(placement_info(done))
    if results.importances:
        figs["importance"] = importance_plot(importance_info(results.importances))
    figs["edf"] = edf_plot(edf_info(done))
    timed = pareto.latency_axis(done)
    if not timed.empty:
        figs["latency"] = pareto_plot(pareto_info(timed, None, latency_status, "latency"))
        figs["latency_madds"] = latency_madds_plot(latency_madds_info(timed))
    if results.calibration and any(b["tau"] == b["tau"] for b in results.calibration["budgets"]):
        figs["calibration"] = calibration_plot(calibration_info(results.calibration))
    return figs
