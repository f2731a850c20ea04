"""How a search study ordered its trials, as it stores it: reproducibly (with a lag) or as they finished."""

from __future__ import annotations

from typing import Any

import optuna

__all__ = ["ORDER_ATTR", "SearchOrder", "stored_order"]

ORDER_ATTR = "search_order"  # the study attribute that records how its trials were ordered


class SearchOrder:
    """How a search study decides its trials: reproducibly (with its lag) or as they finish."""

    def __init__(self, reproducible: bool, lag: int = 1, legacy: bool = False) -> None:
        self.reproducible, self.lag, self.legacy = reproducible, max(1, lag), legacy

    def to_dict(self) -> dict[str, Any]:
        """What the study stores (its attribute `search_order`)."""
        return {"reproducible": self.reproducible, "lag": self.lag}

    def describe(self) -> str:
        """One phrase for progress lines and reports."""
        if self.legacy:
            return "not run reproducibly (stored before reproducible searches existed)"
        if not self.reproducible:
            return "not reproducible (reproducible: false: trials sampled as results arrive)"
        return f"reproducible (trial n from seed, n and trials 0..n-{self.lag})"


def stored_order(study: optuna.Study) -> SearchOrder | None:
    """The order a study was run under; None for a study with nothing stored yet."""
    stored = study.user_attrs.get(ORDER_ATTR)
    if stored is not None:
        return SearchOrder(bool(stored.get("reproducible")), int(stored.get("lag", 1)))
    if study.get_trials(deepcopy=False):
        return SearchOrder(False, legacy=True)  # trials from before slots existed
    return None
