"""Proxy calibration: how long a proxy must train to rank architectures as a long run does.

A ladder of proxy budgets (epochs x training images) and a reference budget at the top; each
chosen architecture is trained at every budget, and each budget is scored by the Kendall tau of
its accuracies with the reference's, beside the tau that MAdds alone and params alone reach on
the same architectures. The recommended budget is the cheapest (training seconds an
architecture) whose tau reaches `min_tau` and beats MAdds alone. Torch- and Optuna-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .pareto import kendall_tau

__all__ = ["Budget", "Calibration", "budget_label", "seed_agreement", "seed_line", "spread", "study_lines",
           "summarise"]

Budget = tuple[int, int | None]  # (epochs, training images; None: every image)


@dataclass(frozen=True)
class Calibration:
    """The ladder of proxy budgets, the reference budget, and what a recommendation needs."""

    epochs: tuple[int, ...] = (1, 2, 4, 8)
    train_images: tuple[int | None, ...] = (4000, 16000, None)
    reference: Budget = (16, None)
    min_tau: float = 0.7
    archs: int = 10

    def ladder(self) -> list[Budget]:
        """Every proxy budget below the reference, cheapest first (fewest image passes)."""
        budgets = {(e, n) for e in self.epochs for n in self.train_images} - {self.reference}
        return sorted(budgets, key=lambda b: (b[0] * (b[1] or math.inf), b[0]))

    def budgets(self) -> list[Budget]:
        """The ladder and the reference, the runs each architecture gets."""
        return [*self.ladder(), self.reference]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings, as stored with the calibration study."""
        return {"epochs": list(self.epochs), "train_images": list(self.train_images),
                "reference": list(self.reference), "min_tau": self.min_tau, "archs": self.archs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """The settings stored by `to_dict`."""
        return cls(epochs=tuple(data["epochs"]), train_images=tuple(data["train_images"]),
                   reference=(data["reference"][0], data["reference"][1]),
                   min_tau=float(data["min_tau"]), archs=int(data["archs"]))


def budget_label(budget: Budget) -> str:
    """'4 ep x 16000' or '8 ep x all'."""
    return f"{budget[0]} ep x {budget[1] if budget[1] is not None else 'all'}"


def spread(madds: Sequence[float], k: int) -> list[int]:
    """Indices of k items evenly spaced over log-MAdds (all of them when there are fewer)."""
    order = sorted(range(len(madds)), key=lambda i: madds[i])
    if len(order) <= k:
        return order
    if k == 1:
        return [order[len(order) // 2]]
    logs = [math.log(max(madds[i], 1.0)) for i in order]
    picked: list[int] = []
    for j in range(k):  # nearest unpicked item to each evenly spaced target
        target = logs[0] + j * (logs[-1] - logs[0]) / (k - 1)
        free = [p for p in range(len(order)) if order[p] not in picked]
        picked.append(order[min(free, key=lambda p: (abs(logs[p] - target), p))])
    return sorted(picked, key=lambda i: madds[i])


def seed_agreement(replicates: pd.DataFrame | None) -> dict[str, Any]:
    """How well the reference ranks itself: Kendall tau between two seeds' accuracies over the
    architectures trained at both (mean over seed pairs), and the pooled within-architecture
    seed standard deviation. `replicates`: arch_key, seed, val_acc, one row per run.

    No proxy can be expected to rank like the reference better than the reference's own seeds do.
    """
    if replicates is None or replicates.empty:
        return {"seed_tau": math.nan, "seed_pairs": 0, "seed_archs": 0, "seed_sd": math.nan}
    wide = replicates.pivot_table(index="arch_key", columns="seed", values="val_acc",
                                  aggfunc="first")
    taus = []
    seeds = sorted(wide.columns)
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            both = wide[[a, b]].dropna()
            if len(both) >= 2:
                taus.append(kendall_tau(both[a].tolist(), both[b].tolist())[0])
    taus = [t for t in taus if not math.isnan(t)]
    n = wide.notna().sum(axis=1)
    deviations = wide.sub(wide.mean(axis=1), axis=0).pow(2).sum(axis=1)[n >= 2]
    dof = int((n[n >= 2] - 1).sum())
    return {"seed_tau": sum(taus) / len(taus) if taus else math.nan,
            "seed_pairs": len(taus), "seed_archs": int((n >= 2).sum()),
            "seed_sd": math.sqrt(float(deviations.sum()) / dof) if dof else math.nan}


def summarise(runs: pd.DataFrame, cal: Calibration,
              replicates: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per ladder budget: tau with the reference (p), tau of MAdds and params, seconds an arch.

    `runs` has one row per finished run: arch_key, epochs, train_images (NaN or None: all),
    val_acc, seconds, madds, params. Each budget is scored on the architectures that finished
    both it and the reference. `replicates` (arch_key, seed, val_acc) are every run at the
    reference budget, the sibling studies' too, for the reference's own seed agreement.
    """
    runs = runs.copy()
    runs["train_images"] = pd.to_numeric(runs.train_images).fillna(0).astype(int)  # 0: all
    ref = runs[(runs.epochs == cal.reference[0]) & (runs.train_images == (cal.reference[1] or 0))]
    ref = ref.groupby("arch_key").agg(ref_acc=("val_acc", "mean"), madds=("madds", "first"),
                                      params=("params", "first"), ref_seconds=("seconds", "mean"))
    out = []
    for e, n in cal.ladder():
        mine = runs[(runs.epochs == e) & (runs.train_images == (n or 0))]
        mine = mine.groupby("arch_key").agg(val_acc=("val_acc", "mean"), seconds=("seconds", "mean"))
        both = mine.join(ref, how="inner")
        tau, p = kendall_tau(both.val_acc.tolist(), both.ref_acc.tolist())
        out.append({"epochs": e, "train_images": n, "label": budget_label((e, n)),
                    "archs": len(both), "tau": tau, "p_value": p,
                    "tau_madds": kendall_tau(both.madds.tolist(), both.ref_acc.tolist())[0],
                    "tau_params": kendall_tau(both.params.tolist(), both.ref_acc.tolist())[0],
                    "seconds_per_arch": float(mine.seconds.mean()) if len(mine) else math.nan})
    good = [b for b in out if b["archs"] >= 4 and b["tau"] >= cal.min_tau
            and (math.isnan(b["tau_madds"]) or b["tau"] > b["tau_madds"])]
    recommended = min(good, key=lambda b: b["seconds_per_arch"]) if good else None
    return {"budgets": out, "recommended": recommended, "min_tau": cal.min_tau,
            "reference": {"epochs": cal.reference[0], "train_images": cal.reference[1],
                          "archs": len(ref),
                          "seconds_per_arch": float(ref.ref_seconds.mean()) if len(ref) else math.nan,
                          # How far apart the architectures are at the reference: a span within
                          # a few seed standard deviations leaves no ranking for a proxy to match.
                          "acc_min": float(ref.ref_acc.min()) if len(ref) else math.nan,
                          "acc_max": float(ref.ref_acc.max()) if len(ref) else math.nan,
                          **seed_agreement(replicates)}}


def seed_line(reference: dict[str, Any]) -> str:
    """One sentence on how well the reference ranks itself across seeds (the ceiling of tau)."""
    if reference.get("seed_pairs", 0) == 0:
        return ("The reference's own seed agreement is unknown: one seed per architecture "
                "(baselines with seeds >= 2 at the reference budget measure it)")
    return (f"The reference against itself: tau {reference['seed_tau']:.2f} between seeds over "
            f"{reference['seed_archs']} architectures (seed sd {reference['seed_sd']:.4f}); "
            "no proxy can be expected to rank better")


def verdict_line(summary: dict[str, Any]) -> str:
    """One sentence naming the recommended budget, or saying that none qualifies and what to do."""
    if (rec := summary.get("recommended")) is None:
        return (f"No budget reaches tau {summary['min_tau']:g} and beats MAdds alone: search at "
                "the reference budget, or add longer budgets to calibration.epochs/train_images")
    return (f"The cheapest budget whose tau reaches {summary['min_tau']:g} and beats MAdds alone "
            f"is {rec['label']} (tau {rec['tau']:.2f}, {rec['seconds_per_arch']:.1f} s an "
            "architecture)")


def study_lines(recommended: dict[str, Any] | None, train_size: int) -> list[str]:
    """The study-file lines that set the recommended proxy budget."""
    if recommended is None:
        return []
    n = recommended["train_images"]
    limit = "train_limit: null    # every training image" if n is None or n >= train_size \
        else f"train_limit: {n}"
    return [limit, f"recipe: {{epochs: {recommended['epochs']}}}    # keep your other recipe keys"]
