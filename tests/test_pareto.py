"""Pareto front on hand-made sets whose answers are known."""

from condconv_nas.analysis.pareto import pareto_front


def test_front_by_hand():
    pts = [(0.90, 10), (0.85, 5), (0.88, 12), (0.95, 20), (0.80, 5), (0.95, 25)]
    # (0.88, 12) is dominated by (0.90, 10); (0.80, 5) by (0.85, 5); (0.95, 25) by (0.95, 20)
    assert pareto_front(pts) == [1, 0, 3]


def test_duplicates_and_empty():
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 1), (0.5, 1)]) == [0, 1]
    assert pareto_front([(0.5, 1), (0.5, 2)]) == [0]


def test_against_brute_force():
    import random

    rng = random.Random(0)
    for _ in range(50):
        pts = [(round(rng.random(), 2), rng.randint(1, 20)) for _ in range(15)]
        brute = {i for i, (a, m) in enumerate(pts)
                 if not any((b >= a and n <= m) and (b > a or n < m) for b, n in pts)}
        assert set(pareto_front(pts)) == brute


# --- frames ---------------------------------------------------------------------------------------

import math  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from condconv_nas.analysis.pareto import (  # noqa: E402
    Normalisation,
    front,
    gain_at_matched_madds,
    hypervolume,
    hypervolume_history,
    madds_saved_at_matched_accuracy,
    normalisation,
    power_law_fit,
    seed_means,
    summary,
)


def frame(rows, family="search"):
    return pd.DataFrame([{"family": family, "val_acc": a, "madds": m} for a, m in rows])


def test_front_frame_sorted_and_deduplicated():
    f = front(frame([(0.90, 10), (0.85, 5), (0.88, 12), (0.90, 10)]))
    assert list(zip(f.val_acc, f.madds)) == [(0.85, 5), (0.90, 10)]


def test_hypervolume_by_hand():
    # Normalised on log10 MAdds 1..100 and accuracy 0.5..1.0: (10 MAdds, 0.75) -> (0.5, 0.5),
    # (1 MAdd, 0.6) -> (0, 0.2); the reference is (1.1, -0.1). Strips:
    # (1.1 - 0) * (0.2 + 0.1) + (1.1 - 0.5) * (0.5 - 0.2) = 0.33 + 0.18 = 0.51.
    norm = Normalisation(1, 100, 0.5, 1.0)
    assert hypervolume(frame([(0.75, 10), (0.6, 1)]), norm) == pytest.approx(0.51)
    assert hypervolume(frame([(1.0, 1)]), norm) == pytest.approx(1.21)  # the ideal corner
    assert hypervolume(frame([]), norm) == 0.0
    # The worst corner itself (dearest MAdds, lowest accuracy) adds to the volume: 0.1 * 0.1.
    assert hypervolume(frame([(0.5, 100)]), norm) == pytest.approx(0.01)
    assert hypervolume(frame([(0.5, 100), (0.75, 10)]), norm) > hypervolume(frame([(0.75, 10)]),
                                                                          norm) - 1e-12


def test_hypervolume_matches_optuna_on_random_sets():
    # Independent reference: Optuna's WFG hypervolume on (cost, -quality) against (1.1, 0.1).
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for _ in range(20):
        acc, madds = rng.uniform(0.5, 0.95, 12), np.exp(rng.uniform(10, 16, 12))
        df = frame(list(zip(acc, madds)))
        norm = normalisation(df)
        pts = np.stack([norm.cost(madds), -norm.quality(acc)], axis=1)
        ref = compute_hypervolume(pts, np.array([1.1, 0.1]))
        assert hypervolume(df, norm) == pytest.approx(ref, abs=1e-12)


def test_hypervolume_history_never_falls():
    rng = np.random.default_rng(1)
    df = frame(list(zip(rng.uniform(0.5, 0.9, 30), rng.integers(1, 100, 30))))
    df["number"] = range(30)
    hist = hypervolume_history(df, normalisation(df))
    assert (np.diff(hist.hypervolume) >= 0).all() and hist.hypervolume.iloc[-1] > 0


def test_seed_means_and_std():
    df = pd.DataFrame({"family": "width", "multiplier": [1.0, 1.0, 2.0, 2.0], "seed": [0, 1, 0, 1],
                       "val_acc": [0.8, 0.9, 0.85, 0.85], "madds": [10, 10, 20, 20]})
    m = seed_means(df)
    assert list(m.val_acc) == pytest.approx([0.85, 0.85])
    assert m.acc_std.iloc[0] == pytest.approx(math.sqrt(0.005))  # sample std of 0.8, 0.9
    assert m.acc_std.iloc[1] == 0 and list(m.seeds) == [2, 2]


def baseline_line():
    # accuracy = 0.5 + 0.1 * log10(MAdds) at 1e5 .. 1e7, seed std 0.01 everywhere.
    rows = []
    for i, m in enumerate([1e5, 1e6, 1e7]):
        for seed, d in enumerate((-0.01, 0.01)):
            rows.append({"family": "width", "multiplier": float(i), "seed": seed,
                         "val_acc": 0.5 + 0.1 * math.log10(m) + d,
                         "madds": m})
    return pd.DataFrame(rows)


def test_gain_at_matched_madds_interpolates_on_log_madds_inside_range():
    search = frame([(0.5 + 0.65 + 0.03, 10 ** 6.5), (0.99, 10 ** 7.5), (0.9, 10 ** 4)])
    g = gain_at_matched_madds(search, baseline_line())
    assert list(g.madds) == [10 ** 6.5]  # the other two lie outside the baseline's range
    assert g.gain.iloc[0] == pytest.approx(0.03)
    assert g.noise.iloc[0] == pytest.approx(2 * math.sqrt(0.0002))  # two sample stds
    assert bool(g.beyond_noise.iloc[0]) is True


def test_gain_past_the_front_holds_its_last_accuracy():
    # The dearest width point (1e8 MAdds, 0.9) is dominated by (1e7, 1.2): at 10^7.5 the baseline
    # front still offers 1.2, and 10^7.5 lies inside the family's range (1e5 .. 1e8).
    base = pd.concat([baseline_line(), pd.DataFrame([
        {"family": "width", "multiplier": 9.0, "seed": s, "val_acc": 0.9, "madds": 1e8}
        for s in (0, 1)])])
    g = gain_at_matched_madds(frame([(1.25, 10 ** 7.5), (1.0, 10 ** 8.5)]), base)
    assert list(g.madds) == [10 ** 7.5] and g.gain.iloc[0] == pytest.approx(1.25 - 1.2)


def test_madds_saved_at_matched_accuracy():
    # 0.5 + 0.1 * log10(m) = 1.1 at m = 1e6: a search point there with 2.5e5 MAdds saves 75%.
    g = madds_saved_at_matched_accuracy(frame([(1.1, 2.5e5), (0.2, 10)]), baseline_line())
    assert list(g.val_acc) == [1.1]
    assert g.baseline_madds.iloc[0] == pytest.approx(1e6)
    assert g.saved.iloc[0] == pytest.approx(0.75)


def test_power_law_fit_recovers_slope():
    m = np.array([1e5, 3e5, 1e6, 5e6])
    df = frame(list(zip(1 - 2.0 * m ** -0.3, m)))
    fit = power_law_fit(df)
    assert fit["slope"] == pytest.approx(-0.3) and fit["coef"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert math.isnan(power_law_fit(frame([(0.9, 5)]))["slope"])


def test_summary_rows_and_gains():
    trials = pd.concat([frame([(0.5 + 0.65 + 0.03, 10 ** 6.5), (1.25, 10 ** 6.9)]), baseline_line()])
    s = summary(trials).set_index("family")
    assert list(s.index) == ["search", "width"]
    assert s.loc["search", "front"] == 2 and s.loc["width", "front"] == 3
    assert s.loc["width", "gain_mean"] == pytest.approx(np.mean([0.03, 1.25 - (0.5 + 0.69)]))
    assert s.loc["width", "beyond_noise"] == "2 of 2"
    # Shared scale: log10 MAdds 5..7, accuracy 0.99 (worst seed) .. 1.25, reference (1.1, -0.1).
    # Width's seed means (1.0, 1e5), (1.1, 1e6), (1.2, 1e7) at cost 0, 0.5, 1 give strips
    # 1.1 * (0.01/0.26 + 0.1) + 0.6 * 0.1/0.26 + 0.1 * 0.1/0.26.
    assert s.loc["width", "hypervolume"] == pytest.approx(
        1.1 * (0.01 / 0.26 + 0.1) + 0.6 * 0.1 / 0.26 + 0.1 * 0.1 / 0.26)


# --- Kendall tau -----------------------------------------------------------------------------------

from condconv_nas.analysis.pareto import kendall_tau  # noqa: E402


def test_kendall_tau_by_hand():
    # x = 1..5, y = 3 4 1 2 5: of the 10 pairs, (1,2) (1,5) (2,5) (3,4) (3,5) (4,5) are
    # concordant and (1,3) (1,4) (2,3) (2,4) discordant: tau = (6 - 4) / 10.
    tau, _ = kendall_tau([1, 2, 3, 4, 5], [3, 4, 1, 2, 5])
    assert tau == pytest.approx(0.2)
    # n = 4 in the same order: only 1 of the 24 orderings is as extreme each way.
    tau, p = kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])
    assert tau == 1.0 and p == pytest.approx(2 / 24)
    assert kendall_tau([1, 2, 3], [3, 2, 1])[0] == -1.0
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5])[0])


def test_kendall_exact_p_matches_enumeration():
    # Reference: enumerate all 720 orderings of 6 items and count those at least as extreme.
    import itertools

    x = [0.1, 0.5, 0.3, 0.9, 0.7, 0.2]
    y = [0.2, 0.4, 0.5, 0.8, 0.6, 0.1]
    tau, p = kendall_tau(x, y)

    def s_of(a, b):
        return sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
                   for i in range(len(a)) for j in range(i + 1, len(a)))

    s_obs = s_of(x, y)
    extreme = sum(abs(s_of(x, perm)) >= abs(s_obs) for perm in itertools.permutations(y))
    assert p == pytest.approx(extreme / 720)
    assert tau == pytest.approx(s_obs / 15)


def test_kendall_with_ties_uses_tau_b():
    # Ties in x: pairs (1,2) tied. tau-b = (C - D) / sqrt((n0 - n1) (n0 - n2)).
    x, y = [1, 1, 2, 3], [1, 2, 3, 4]
    tau, p = kendall_tau(x, y)
    assert tau == pytest.approx(5 / math.sqrt(5 * 6))
    # Kendall's tie-corrected variance by hand: n = 4, one tie of two in x:
    # (n(n-1)(2n+5) - t(t-1)(2t+5)) / 18 = (156 - 18) / 18; S = C - D = 5.
    var = (4 * 3 * 13 - 2 * 1 * 9) / 18
    assert p == pytest.approx(math.erfc(5 / math.sqrt(var) / math.sqrt(2)), rel=1e-9)


def test_summary_compares_the_search_with_the_random_control():
    # The control is search-like (no multipliers): its front is the curve, as given.
    search = frame([(0.80, 2e6), (0.90, 8e6)])
    control = pd.DataFrame({"family": "random", "val_acc": [0.75, 0.85], "madds": [1e6, 1e7],
                            "multiplier": [math.nan, math.nan]})
    s = summary(pd.concat([search, control])).set_index("family")
    # At 2e6 (log-interpolated between 1e6 and 1e7) the control has 0.75 + 0.1 * log10(2).
    expected = np.mean([0.80 - (0.75 + 0.1 * math.log10(2)), 0.90 - (0.75 + 0.1 * math.log10(8))])
    assert s.loc["random", "gain_mean"] == pytest.approx(expected)
