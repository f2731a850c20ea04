"""The report's figure data (`*_info`), checked on the data against references written here."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from condconv_nas.analysis import pareto
from condconv_nas.analysis.figures import (
    COLORS,
    FAMILY_LABELS,
    Curve,
    EdfInfo,
    ParetoInfo,
    TrialSeries,
    build_figures,
    edf_info,
    edf_plot,
    hypervolume_info,
    importance_info,
    importance_plot,
    pareto_info,
    pareto_plot,
    placement_info,
)
from condconv_nas.analysis.results import experts_by_block
from tests.test_report import fake_study, results_of

BASELINES = ["width", "depth", "compound", "experts"]  # the order the figures show them in


def _front_by_dominance(points: list[tuple[int, float]]) -> set[tuple[int, float]]:
    """(madds, acc) points that no other point dominates: O(n^2), as in the definition."""
    kept = set()
    for m, a in points:
        if not any(m2 <= m and a2 >= a and (m2 < m or a2 > a) for m2, a2 in points):
            kept.add((m, a))
    return kept


def _area(points: list[tuple[float, float]], margin: float = pareto.REF_MARGIN) -> float:
    """Area of the union of rectangles [cost, 1 + m] x [-m, quality], swept along the cost axis."""
    xs = sorted({c for c, _ in points} | {1.0 + margin})
    area = 0.0
    for lo, hi in zip(xs, xs[1:]):
        area += (hi - lo) * (max((q for c, q in points if c <= lo), default=-margin) + margin)
    return area


def _plain(value) -> bool:
    """Only tuples of str, int, float, bool and None (no numpy, pandas or plotly objects)."""
    if dataclasses.is_dataclass(value):
        return all(_plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return type(value) in (str, int, float, bool, type(None))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return results_of(fake_study(tmp_path_factory.mktemp("study"), random=True))


def test_infos_are_frozen_plain_data(results):
    done = results.finished
    infos = [pareto_info(done, 1.0), hypervolume_info(done, pareto.normalisation(done)),
             placement_info(done), importance_info(results.importances), edf_info(done)]
    for info in infos:
        assert _plain(info), type(info).__name__
        first = dataclasses.fields(info)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(info, first, ())


def test_colors_follow_the_family_order_and_random_has_one_label():
    assert list(COLORS) == ["search", "random", *BASELINES]
    assert len(set(COLORS.values())) == len(COLORS)
    assert FAMILY_LABELS == {"random": "random control"}


def test_pareto_fronts_are_the_non_dominated_trials(results):
    done = results.finished
    info = pareto_info(done, 6_500_000)
    assert info.budget == 6_500_000
    assert [s.family for s in info.trials] == [s.family for s in info.fronts] == ["search", "random"]
    for every, front in zip(info.trials, info.fronts):
        rows = done[done.family == every.family].sort_values("number")
        assert sorted(every.number) == rows.number.tolist()
        by_number = dict(zip(every.number, zip(every.madds, every.val_acc)))
        assert by_number == {int(n): (int(m), float(a))
                             for n, m, a in zip(rows.number, rows.madds, rows.val_acc)}
        assert len(every.hover) == len(every.number)
        reference = _front_by_dominance(list(zip(rows.madds.astype(int), rows.val_acc)))
        points = list(zip(front.madds, front.val_acc))
        assert set(points) == reference and len(points) == len(reference)
        assert list(front.madds) == sorted(front.madds)
        assert all(a < b for a, b in zip(front.val_acc, front.val_acc[1:]))  # rising with MAdds
        for n, m, a in zip(front.number, front.madds, front.val_acc):
            assert by_number[n] == (m, a)  # each front point is that trial


def test_pareto_baselines_are_seed_means(results):
    done = results.finished
    info = pareto_info(done)
    assert [b.family for b in info.baselines] == BASELINES
    for b in info.baselines:
        rows = done[done.family == b.family]
        ref = (rows.groupby("multiplier").agg(madds=("madds", "mean"), acc=("val_acc", "mean"),
                                              sd=("val_acc", "std"), n=("val_acc", "count"))
               .reset_index().sort_values("madds"))
        assert list(b.multiplier) == ref.multiplier.tolist()
        assert list(b.madds) == ref.madds.tolist()
        assert list(b.seeds) == ref.n.tolist() and min(b.seeds) >= 2
        np.testing.assert_allclose(b.val_acc, ref.acc, rtol=0, atol=1e-12)
        np.testing.assert_allclose(b.acc_std, ref.sd.fillna(0.0), rtol=0, atol=1e-12)
        assert all(f"({n} seeds)" in h for h, n in zip(b.hover, b.seeds))


def test_a_baseline_point_with_one_seed_has_no_error_bar(results):
    done = results.finished
    alone = done[(done.family == "width") & (done.seed == 1)].index[0]  # drop one seed of one point
    width = pareto_info(done.drop(index=alone)).baselines[0]
    multiplier = float(done.loc[alone, "multiplier"])
    i = width.multiplier.index(multiplier)
    assert width.seeds[i] == 1 and width.acc_std[i] == 0.0
    assert width.val_acc[i] == done[(done.family == "width") & (done.multiplier == multiplier)
                                    & (done.seed == 0)].val_acc.item()
    assert all(s > 0 for j, s in enumerate(width.acc_std) if j != i)


def test_pareto_info_without_control_or_baselines(tmp_path):
    info = pareto_info(results_of(fake_study(tmp_path, baselines=False)).finished)
    assert [s.family for s in info.trials] == ["search"] and info.baselines == () and info.budget is None


def test_hypervolume_history_rises_to_the_whole_front(results):
    done = results.finished
    norm = pareto.normalisation(done)
    info = hypervolume_info(done, norm)
    assert [h.family for h in info.histories] == ["search", "random"]
    for h in info.histories:
        rows = done[done.family == h.family]
        assert list(h.x) == sorted(rows.number)
        assert all(b >= a for a, b in zip(h.y, h.y[1:]))
        assert h.y[-1] == pytest.approx(pareto.hypervolume(pareto.front(rows), norm), abs=1e-12)
        # An independent reference: the swept area under all the family's trials.
        points = list(zip(norm.cost(rows.madds.to_numpy()), norm.quality(rows.val_acc.to_numpy())))
        assert h.y[-1] == pytest.approx(_area(points), abs=1e-9) and 0 < h.y[-1] <= 1.21
        first = rows.nsmallest(2, "number")  # after two trials: the area of those two
        two = list(zip(norm.cost(first.madds.to_numpy()), norm.quality(first.val_acc.to_numpy())))
        assert h.y[1] == pytest.approx(_area(two), abs=1e-9)
    assert [f for f, _ in info.baselines] == BASELINES
    for family, hv in info.baselines:
        means = done[done.family == family].groupby("multiplier")[["madds", "val_acc"]].mean()
        points = list(zip(norm.cost(means.madds.to_numpy()), norm.quality(means.val_acc.to_numpy())))
        assert hv == pytest.approx(_area(points), abs=1e-9)


def test_placement_holds_each_front_spec_expert_counts(results):
    done = results.finished
    info = placement_info(done)
    search = done[done.family == "search"]
    reference = _front_by_dominance(list(zip(search.madds.astype(int), search.val_acc)))
    assert set(zip(info.madds, info.val_acc)) == reference and len(info.number) == len(reference)
    specs = dict(zip(search.number, search.spec))
    per_column = [experts_by_block(json.loads(specs[n])) for n in info.number]
    assert set(info.blocks) == {name for blocks in per_column for name in blocks}
    keys = [tuple(map(int, re.fullmatch(r"s(\d+)\.b(\d+)", name).groups())) for name in info.blocks]
    assert keys == sorted(keys)  # network order: stage, then block
    assert len(info.experts) == len(info.blocks)
    for row, name in enumerate(info.blocks):
        assert len(info.experts[row]) == len(info.number)
        for col, blocks in enumerate(per_column):
            assert info.experts[row][col] == blocks.get(name)
    heat = build_figures(results)["placement"].data[0]
    assert [list(r) for r in heat.z] == [list(r) for r in info.experts]


def test_importance_info_is_sorted_ascending(results):
    info = importance_info({"b": 0.5, "a": 0.1, "c": 0.4})
    assert info.params == ("a", "c", "b") and info.importance == (0.1, 0.4, 0.5)
    info = importance_info(results.importances)
    assert dict(zip(info.params, info.importance)) == results.importances
    assert list(info.importance) == sorted(results.importances.values())
    bar = importance_plot(info).data[0]
    assert list(bar.y) == list(info.params) and list(bar.x) == list(info.importance)


def test_edf_is_the_sorted_errors_with_rising_fractions(results):
    done = results.finished
    info = edf_info(done)
    assert [s.family for s in info.series] == ["search", "random", *BASELINES]
    for s in info.series:
        errors = sorted(1.0 - done[done.family == s.family].val_acc.to_numpy())
        n = len(errors)
        assert n == len(s.x) == len(s.y) > 0
        np.testing.assert_allclose(s.x, errors, rtol=0, atol=1e-12)
        assert list(s.y) == [(i + 1) / n for i in range(n)] and s.y[-1] == 1.0


def test_plots_draw_only_their_info():
    trials = TrialSeries("random", (3, 1), (2_000_000, 1_000_000), (0.6, 0.5), ("a", "b"))
    front = TrialSeries("random", (1, 3), (1_000_000, 2_000_000), (0.5, 0.6), ("b", "a"))
    fig = pareto_plot(ParetoInfo((trials,), (front,), (), None))
    assert [t.name for t in fig.data] == ["random control: all trials",
                                          "random control: front (single runs)"]
    assert list(fig.data[1].x) == [1_000_000, 2_000_000] and list(fig.data[1].y) == [0.5, 0.6]
    assert fig.data[0].marker.color == COLORS["random"] and not fig.layout.shapes  # no budget line
    edf = edf_plot(EdfInfo((Curve("width", (0.1, 0.3), (0.5, 1.0)),)))
    assert edf.data[0].name == "width (n=2)" and list(edf.data[0].x) == [0.1, 0.3]


def test_an_unknown_family_is_kept_out_of_pareto_and_edf_but_not_hypervolume(results):
    done = results.finished.copy()
    done.loc[done.family == "experts", "family"] = "zzz"  # a family the report does not know
    assert [b.family for b in pareto_info(done).baselines] == ["width", "depth", "compound"]
    assert "zzz" not in [s.family for s in edf_info(done).series]
    norm = pareto.normalisation(done)
    hv = hypervolume_info(done, norm)
    assert [f for f, _ in hv.baselines] == ["width", "depth", "compound", "zzz"]  # known first
    means = done[done.family == "zzz"].groupby("multiplier")[["madds", "val_acc"]].mean()
    points = list(zip(norm.cost(means.madds.to_numpy()), norm.quality(means.val_acc.to_numpy())))
    assert dict(hv.baselines)["zzz"] == pytest.approx(_area(points), abs=1e-9)


@pytest.mark.parametrize("madds, params, labels", [
    # MAdds and params alone within a label's height of each other: one label, on the lower line.
    (-0.04, 0.0, ["MAdds alone (-0.04), params alone (0.00)", "tau wanted (0.7)"]),
    (-0.5, 0.3, ["MAdds alone (-0.50)", "params alone (0.30)", "tau wanted (0.7)"]),
    (0.62, 0.1, ["params alone (0.10)", "MAdds alone (0.62), tau wanted (0.7)"]),
])
def test_calibration_lines_never_stack_their_labels(madds, params, labels):
    from condconv_nas.analysis.figures import CalibrationInfo, calibration_plot

    fig = calibration_plot(CalibrationInfo(("1 ep x 2000",), (25.0,), (0.1,), madds, params, 0.7,
                                           None))
    assert len(fig.layout.shapes) == 3  # every line is drawn
    shown = sorted((a.y, a.text) for a in fig.layout.annotations)
    assert [text for _, text in shown] == labels
    assert all(abs(a - b) >= 0.15 for (a, _), (b, _) in zip(shown, shown[1:]))
