"""Pareto front on hand-made sets whose answers are known."""

from condconv_nas.pareto import pareto_front


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
