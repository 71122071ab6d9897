"""What a server's ``specs`` and ``gpu_array`` may hold: field by field, strictly.

Specs come from host agents, which are other people's machines: a hostile or broken agent may
send any JSON. Everything it sends is served to every user in the marketplace and reaches renters'
terminals, so each field has a type, a range and a length, and text may not hold control
characters (C0, DEL, C1) or Unicode direction overrides, which rewrite what a terminal shows.

The same rules run twice: when an agent reports specs (invalid fields are dropped, valid ones
kept), and again when stored specs are rendered (so data stored before a rule existed can never
break a listing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_SPECS_BYTES = 8192
MAX_GPUS = 64
MAX_GPU_NAME = 128
MAX_GPU_TEXT = 160  # specs' "Nx NAME"
# C0 controls, DEL, C1 controls, zero-width and bidirectional formatting characters
UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def safe_text(value: Any, max_length: int) -> str | None:
    """``value`` when it is a string of at most ``max_length`` printable characters, else None."""
    if not isinstance(value, str) or len(value) > max_length or UNSAFE_TEXT.search(value):
        return None
    return value


@dataclass(frozen=True)
class Text:
    max_length: int

    def check(self, value: Any) -> Any:
        return safe_text(value, self.max_length)


@dataclass(frozen=True)
class Number:
    """A JSON number (never a boolean or a string) from 0 to ``maximum``."""

    maximum: float

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value if 0 <= value <= self.maximum else None


@dataclass(frozen=True)
class Country:
    def check(self, value: Any) -> Any:
        return value if isinstance(value, str) and _COUNTRY.match(value) else None


@dataclass(frozen=True)
class Group:
    """A nested object with its own fields (``net``)."""

    fields: Mapping[str, Text | Number | Country]

    def check(self, value: Any) -> Any:
        """The valid fields of the group (an invalid one is dropped, not the whole group)."""
        if not isinstance(value, dict):
            return None
        clean, _ = _check_fields(value, self.fields)
        return clean


Rule = Text | Number | Country | Group

# SPEC §5: {mb, cpu, cpus "cores/threads", ram (GB), disk, disk_speed (MB/s), gpu "Nx NAME",
# gpuram (GB), net{up, down, cc}}, plus what live Clore agents also report.
SPEC_FIELDS: dict[str, Rule] = {
    "mb": Text(128),
    "cpu": Text(128),
    "cpus": Text(32),
    "ram": Number(1_000_000),  # GB
    "disk": Text(128),
    "disk_speed": Number(1_000_000),  # MB/s
    "gpu": Text(MAX_GPU_TEXT),
    "gpuram": Number(100_000),  # GB
    "net": Group({"up": Number(1_000_000), "down": Number(1_000_000), "cc": Country()}),
    "cuda_version": Text(16),
    "nvidia_driver": Text(32),
    "pcie_rev": Number(16),
    "pcie_width": Number(64),
}


def _check_fields(
    raw: Mapping[Any, Any], rules: Mapping[str, Rule]
) -> tuple[dict[str, Any], list[str]]:
    clean: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        rule = rules.get(key) if isinstance(key, str) else None
        if rule is None:
            problems.append(f"unknown field {str(key)[:32]!r}")
            continue
        checked = rule.check(value)
        if checked is None:
            problems.append(f"invalid {key}")
            continue
        clean[key] = checked
    return clean, problems


def check_specs(raw: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """The valid part of reported specs and what was dropped (``None``: nothing usable)."""
    if not isinstance(raw, dict):
        return None, ["specs must be an object"]
    if len(raw) > 2 * len(SPEC_FIELDS):
        return None, ["too many fields"]
    clean, problems = _check_fields(raw, SPEC_FIELDS)
    return clean, problems


def clean_specs(stored: Any) -> dict[str, Any] | None:
    """Specs as they may be shown: the valid fields of what is stored (``None`` stays ``None``)."""
    if stored is None:
        return None
    clean, _ = check_specs(stored)
    return clean if clean is not None else {}


def check_gpu_array(raw: Any) -> list[str] | None:
    """A list of at most 64 GPU names, each printable text of at most 128 characters."""
    if not isinstance(raw, list) or len(raw) > MAX_GPUS:
        return None
    names = [safe_text(name, MAX_GPU_NAME) for name in raw]
    if any(name is None for name in names):
        return None
    return [name for name in names if name is not None]


def clean_gpu_array(stored: Any) -> list[str]:
    return check_gpu_array(stored) or []


GPU_TEXT = re.compile(r"^\s*(\d+)\s*x\s*(.*)$", re.IGNORECASE)  # specs' "gpu": "Nx NAME"


def gpu_count(gpu_array: Any, specs: Any) -> int:
    """How many GPUs a server's agent reported: its ``gpu_array``, else the N of its specs'
    ``gpu`` "Nx NAME" (an agent on a machine without one reports ``"0x"`` and ``[]``: 0)."""
    names = clean_gpu_array(gpu_array)
    if names:
        return len(names)
    gpu = safe_text(specs.get("gpu"), MAX_GPU_TEXT) if isinstance(specs, dict) else None
    match = GPU_TEXT.match(gpu or "")
    return int(match.group(1)) if match else 0


NO_GPU = "no_gpu"  # why a server is left out of the marketplace (``my_servers`` ``not_listed``)


def not_listed_reason(gpu_array: Any, specs: Any) -> str | None:
    """Why the marketplace leaves out a server its host made available, on its hardware alone
    (None: nothing): the GPU marketplace lists only servers with at least one GPU."""
    return NO_GPU if gpu_count(gpu_array, specs) == 0 else None
