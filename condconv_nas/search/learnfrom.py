"""What a multi-fidelity search's sampler learns from: all rungs, the top rung, or rung ranks.

A 1-epoch accuracy and a 9-epoch one are not the same quantity: fed to the sampler side by side,
"good" is confounded with how long a run trained. `learn_from` in the study's `multifidelity`
block chooses the sampler's view of the finished runs (the promotion rule, fronts and claims
never change): `all` as stored; `top` only top-rung runs (and over-budget samples, which trained
nothing at any rung); `ranks` every run with its accuracy replaced by its mid-rank among the
finished runs of its own rung, a share in (0, 1), so that rungs speak one scale. MAdds stay.

Every sampler, multi-fidelity or not, is first shown a skipped trial (stored PRUNED, over the
budget or already trained) as it was stored before such trials were PRUNED: COMPLETE, with the
values its record keeps (`as_sampled`). So the samples are the same as they were, and Optuna's
own tools, which read the storage, count trained architectures only.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from ..store.record import TrialRecord
from .multifidelity import MultiFidelity

__all__ = ["as_sampled", "rung_ranks", "sampler_trials"]


def as_sampled(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials with every skipped one shown COMPLETE with its known values (copies)."""
    out = []
    for t in trials:
        if t.state == TrialState.PRUNED and "known_values" in t.user_attrs:
            r = TrialRecord.of(t.user_attrs)
            if r.skipped and r.known_values:
                t = _shown(t, [float(v) for v in r.known_values], TrialState.COMPLETE)
        out.append(t)
    return out


def _shown(t: FrozenTrial, values: list[float], state: TrialState | None = None) -> FrozenTrial:
    """A copy of a trial as the sampler is shown it: other values (and state); the stored
    trial is left as it is."""
    c = FrozenTrial.__new__(FrozenTrial)  # no validation or deep copies: one a trial a claim
    c.__dict__.update(t.__dict__)
    c._values = values
    if state is not None:
        c.state = state
    return c


def rung_ranks(accuracies: Sequence[float]) -> list[float]:
    """Each accuracy's mid-rank share among all of them: (below + half of the equal) / n."""
    n = len(accuracies)
    return [(sum(b < a for b in accuracies) + 0.5 * sum(b == a for b in accuracies)) / n
            for a in accuracies]


def sampler_trials(trials: Sequence[FrozenTrial], mf: MultiFidelity | None) -> list[FrozenTrial]:
    """The trials the sampler is shown (copies where a value changes; the stored ones are kept)."""
    trials = as_sampled(trials)
    if mf is None or mf.learn_from == "all":
        return trials
    records = [TrialRecord.of(t.user_attrs) for t in trials]
    trained = [t.state == TrialState.COMPLETE and not r.infeasible and t.values is not None
               for t, r in zip(trials, records)]
    if mf.learn_from == "top":  # unfinished trials stay: samplers may read running ones
        return [t for t, r, done in zip(trials, records, trained)
                if not (done or t.state == TrialState.PRUNED) or r.rung == mf.top]
    share: dict[int, float] = {}
    for rung in range(mf.top + 1):
        members = [i for i, r in enumerate(records) if trained[i] and r.rung == rung]
        share.update(zip(members, rung_ranks([trials[i].values[0] for i in members])))
    out = []
    for i, t in enumerate(trials):
        if i in share:
            t = _shown(t, [share[i], *t.values[1:]])
        out.append(t)
    return out
