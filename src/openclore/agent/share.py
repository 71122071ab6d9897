"""A per-GPU rental's part of the machine (SPEC §8): its GPUs, CPUs, memory and disk.

A rental that holds k of the machine's n GPU slots (``DesiredContainer.share``) gets exactly the
GPUs it holds (their NVML indices, ``DesiredContainer.gpus``) and k/n of the rest:

- CPUs: slot ``i`` owns the slice ``[i·c/n, (i+1)·c/n)`` of the host's ``c`` CPUs (at least one
  CPU), and a rental is pinned (``cpuset``) to the slices of its slots: contiguous when its slots
  are, never shared with another rental as long as the host has at least as many CPUs as GPUs;
  its CPU time limit is the agent's CPU limit × k/n;
- memory: the agent's memory limit × k/n;
- disk: the agent's disk quota × k/n, where one is configured and the engine supports it.

Everything here is a pure function of the slots, the share and the agent's settings, so a
restarted agent computes the same container again (no restart of running rentals).
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def host_cpus(limit: float | None = None) -> list[int]:
    """The CPUs rentals are pinned within: those the agent may run on (its affinity, else
    ``os.cpu_count()``), the first ``limit`` of them when the agent's CPU limit is lower."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    if limit:
        cpus = cpus[: max(1, int(limit))]
    return cpus or [0]


def slot_cpus(slot: int, n: int, cpus: list[int]) -> list[int]:
    """The CPUs of GPU slot ``slot`` of ``n``: its slice of ``cpus``, at least one CPU."""
    if not 0 <= slot < n:
        raise ValueError(f"slot {slot} is not one of 0..{n - 1}")
    count = len(cpus)
    lo = slot * count // n
    hi = max((slot + 1) * count // n, lo + 1)
    return cpus[lo:hi]


def cpus_for_slots(slots: Iterable[int], n: int, cpus: list[int]) -> list[int]:
    """The CPUs a rental holding ``slots`` (of ``n``) is pinned to, ascending."""
    return sorted({cpu for slot in slots for cpu in slot_cpus(slot, n, cpus)})


def cpuset(cpus: Iterable[int]) -> str:
    """Docker's ``cpuset_cpus`` text for a set of CPUs: ``"0-3,8-11"``."""
    ordered = sorted(set(cpus))
    if not ordered:
        raise ValueError("an empty cpuset")
    parts: list[str] = []
    start = prev = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def scaled(value: int | None, share: tuple[int, int] | None) -> int | None:
    """``value`` × k/n, rounded down to a MiB (Docker's limits are whole numbers of bytes)."""
    if value is None or share is None:
        return value
    k, n = share
    part = value * k // n
    return part // 1024**2 * 1024**2 if part >= 1024**2 else part


def scaled_cpus(cpus: float | None, share: tuple[int, int] | None) -> float | None:
    """The agent's CPU limit × k/n."""
    if cpus is None or share is None:
        return cpus
    k, n = share
    return cpus * k / n


def visible_devices(gpus: list[int]) -> str:
    """``NVIDIA_VISIBLE_DEVICES`` for exactly these GPUs (``void``: none at all)."""
    return ",".join(str(i) for i in sorted(gpus)) or "void"
