"""What a stored trial holds: the one definition of its record, with its reader and writer.

Optuna stores a trial's objective values (validation accuracy, MAdds) and free-form user
attributes. Every attribute this package writes or reads is a field of `TrialRecord`, under the
field's name: the objective writes with `record_attrs`, which refuses a name that is not a field,
and readers (results, storage, workers, tests) read with `TrialRecord.of`. The fields that can
outgrow 1,024 characters (`LONG_FIELDS`) are stored in parts (`store/attrs.py`) and read back
whole. Torch- and Optuna-free.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .attrs import PARTS, in_parts, whole

__all__ = ["BASELINE_FAMILIES", "FAMILY_ORDER", "HOLDOUT_FIELDS", "LONG_FIELDS", "QUEUE_FIELDS",
           "RANDOM",
           "RESULT_FIELDS", "SEARCH", "SEARCH_FAMILIES", "TrialRecord", "copy_source", "pack_bits",
           "record_attrs", "unpack_bits", "write_record"]

# Families of trials, in the order every table, figure and CSV shows them. Search trials are
# "search" (the study X) or "random" (its random-sampler control X.random); baseline trials carry
# their family in the record.
SEARCH, RANDOM = "search", "random"
SEARCH_FAMILIES = (SEARCH, RANDOM)
BASELINE_FAMILIES = ("width", "depth", "compound", "experts")
FAMILY_ORDER = SEARCH_FAMILIES + BASELINE_FAMILIES


@dataclass(frozen=True)
class TrialRecord:
    """The user attributes of one stored trial; absent ones read as their defaults."""

    # What was trained (written by the objective before training).
    spec: dict[str, Any] | None = None       # ArchSpec.to_dict() after adapting to the data
    arch_key: str = ""                       # identity of the architecture (spec without name)
    madds: int | None = None
    params: int | None = None
    device: str = ""
    versions: dict[str, str] | None = None   # condconv_nas, torch, optuna, python
    infeasible: bool = False                 # over the MAdds budget: never trained
    # A sampled trial stored PRUNED without training (over the budget, or an architecture already
    # trained): why, and the (accuracy, cost) its sampler is shown for it. Optuna's own tools
    # (importance, slice, trials_dataframe, the dashboard) then count only trained trials.
    skipped: str = ""
    known_values: list[float] | None = None
    # What training measured.
    curve: list[dict[str, Any]] | None = None   # [{"epoch": e, "val_acc": a}, ...]
    # The holdout split (queued runs only; no search trial ever sees it): accuracy, and which of
    # its images the run got right (`holdout_correct`, packed by `pack_bits`, for
    # per-image paired statistics).
    holdout_acc: float | None = None
    holdout_correct: str = ""
    seconds: float | None = None
    cpu_seconds: float | None = None         # CPU time of the training process over `seconds`
    images_per_s: float | None = None
    epochs_run: int | None = None
    compile_seconds: float | None = None     # torch.compile's share of `seconds` (first step)
    compile_note: str = ""                   # a compile failure the trial survived by going eager
    resumed_epochs: int = 0                  # epochs a killed attempt's checkpoint supplied
    # Measured inference latency (study key `measure`): median and 90th percentile in ms, whether
    # other workers were paused while it was taken, and on what.
    latency_ms: float | None = None
    latency_ms_p90: float | None = None
    latency_isolated: bool | None = None
    latency_device: str = ""
    reused_from: int | None = None           # number of an identical trial whose result is reused
    copied_from: str = ""                    # "study#number": the same run of a sibling study
    weights_artifact: str = ""               # Optuna artifact id of the trained weights (fronts)
    # Who ran it and what became of it.
    worker: str = ""                         # "host:pid" of the claiming worker
    worker_started: str = ""                 # its boot id and start time (storage.process_start)
    fail_reason: str = ""
    stale: bool = False                      # a dead or interrupted attempt: not counted
    retry_of: int | None = None              # the failed attempt this trial runs again
    retry_reason: str = ""
    # A reproducible search's order: the trial's slot (its position in the search, kept by its
    # retries) and the seconds its worker waited for the earlier results its sampler reads.
    slot: int | None = None
    waited_s: float | None = None
    # What a queued trial is to run (carried over when it is queued again): a baseline point,
    # or a confirmation of a front trial (family "search" or "random", `confirm_of` its number).
    baseline_spec: dict[str, Any] | None = None
    family: str | None = None                # a baseline family, or a confirmation's source
    confirm_of: int | None = None            # the front trial this run confirms
    multiplier: float | None = None
    seed: int = 0                            # seed index: 0 is the search's own seed
    baseline_label: str = ""
    # The training budget when it is not the recipe's: a multi-fidelity rung (0: the bottom),
    # the trial promoted to it, and a calibration run's epochs and training images (None: all).
    rung: int = 0
    promoted_from: int | None = None
    epochs: int | None = None
    train_images: int | None = None

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        """Read a trial's user attributes (attributes of no field are ignored)."""
        # Read for every trial on every claim (O(trials) a trial): filled in without the
        # dataclass's keyword __init__, a third of the search's own overhead at trial 150.
        record = object.__new__(cls)
        record.__dict__.update(_DEFAULTS)
        record.__dict__.update({k: attrs[k] for k in attrs.keys() & _FIELD_SET})
        fields = record.__dict__
        for key in LONG_FIELDS:  # inline test: read for every trial on every claim
            value = fields[key]
            if type(value) is dict and PARTS in value:
                fields[key] = whole(attrs, key, _DEFAULTS[key])
        return record

    def final_acc(self) -> float | None:
        """The last validation accuracy of the training curve (pruned and failed trials)."""
        return self.curve[-1]["val_acc"] if self.curve else None


_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord))
_FIELD_SET = frozenset(_FIELDS)
# Every field has a plain (immutable) default: TrialRecord.of shares them.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrialRecord)}
assert dataclasses.MISSING not in _DEFAULTS.values(), "TrialRecord fields need plain defaults"
# A queued trial's instructions, carried over when a dead attempt is queued again.
QUEUE_FIELDS = ("baseline_spec", "family", "multiplier", "seed", "baseline_label", "confirm_of",
                "rung", "promoted_from", "epochs", "train_images", "slot")
# Training results, copied from an identical earlier trial when its result is reused.
RESULT_FIELDS = ("curve", "seconds", "cpu_seconds", "images_per_s", "epochs_run", "compile_seconds",
                 "compile_note", "latency_ms", "latency_ms_p90", "latency_isolated", "latency_device",
                 "holdout_acc", "holdout_correct")
HOLDOUT_FIELDS = ("holdout_acc", "holdout_correct")  # a search trial never holds these
# Fields whose text can pass 1,024 characters (a large spec, a long curve, a big holdout split):
# stored in parts. The others are short by construction (fail_reason is cut at 500).
LONG_FIELDS = ("spec", "baseline_spec", "curve", "holdout_correct")


def pack_bits(correct: Sequence[bool]) -> str:
    """Which images a run got right, as text: '<count>:' + base64 of the bits (numpy order)."""
    import numpy as np

    bits = np.packbits(np.asarray(correct, dtype=bool))
    return f"{len(correct)}:{base64.b64encode(bits.tobytes()).decode('ascii')}"


def unpack_bits(text: str) -> list[bool]:
    """The per-image results that `pack_bits` stored (empty text: none)."""
    import numpy as np

    if not text:
        return []
    count, _, data = text.partition(":")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8))[: int(count)]
    return bits.astype(bool).tolist()


def record_attrs(**fields: Any) -> dict[str, Any]:
    """User attributes to store for the given record fields (long ones in parts); a name of no
    field is an error."""
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise TypeError(f"{unknown[0]!r} is not a TrialRecord field")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        out.update(in_parts(key, value) if key in LONG_FIELDS else {key: value})
    return out


def copy_source(copied_from: str) -> str:
    """A copied run's source as people read it: "study #number"."""
    return copied_from.replace("#", " #")


def write_record(trial: Any, **fields: Any) -> None:
    """Store record fields on a trial in hand (anything with Optuna's `set_user_attr`)."""
    for key, value in record_attrs(**fields).items():
        trial.set_user_attr(key, value)
