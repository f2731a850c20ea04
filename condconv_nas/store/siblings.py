"""The sibling studies of a search study X, which share its storage: one enum, their names, their root."""

from __future__ import annotations

from enum import Enum

__all__ = ["Sibling", "study_root"]


class Sibling(str, Enum):
    """A sibling study's suffix: X.baseline, X.confirm, X.calibrate, X.random."""

    BASELINE = ".baseline"  # width, depth, compound, experts and operator families
    CONFIRM = ".confirm"    # the front retrained under fresh seeds, and its matched-cost controls
    CALIBRATE = ".calibrate"  # the proxy-budget ladder
    RANDOM = ".random"      # the random-sampler control search

    def of(self, name: str) -> str:
        """The name of study `name`'s sibling of this kind."""
        return name + self.value


def study_root(name: str) -> str:
    """The search study a sibling belongs to: its name without the sibling suffix."""
    for sibling in Sibling:
        if name.endswith(sibling.value):
            return name[: -len(sibling.value)]
    return name
