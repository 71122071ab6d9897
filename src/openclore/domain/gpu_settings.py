"""GigaSPOT GPU settings: what a host agent says its GPUs allow, and whether a renter's
per-GPU settings fit.

An agent reports ``gpu_limits`` ``{"allowed": bool, "gpus": [{model, pl, core_lock, mem_lock,
core_offset, mem_offset}]}`` read through NVML: each range is ``[min, max]`` (watts for ``pl``,
MHz for the clocks) or ``null`` where the GPU or driver does not offer it; ``allowed`` is false
when the host does not let renters change its GPUs (the agent's ``--allow-gpu-settings`` is off,
or NVML refused). Like specs, the report comes from somebody else's machine and is checked field
by field before it is stored or shown.
"""

from __future__ import annotations

import math
from typing import Any

from openclore.domain.specs import MAX_GPUS, safe_text

FIELDS = ("pl", "core_lock", "mem_lock", "core_offset", "mem_offset")
_BOUND = 100_000


def _range(value: Any) -> list[float] | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    low, high = value
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        if abs(v) > _BOUND:
            return None
    return [low, high] if low <= high else None


def check_gpu_limits(raw: Any) -> dict[str, Any] | None:
    """The valid part of an agent's report (``None``: nothing usable)."""
    if not isinstance(raw, dict):
        return None
    gpus = raw.get("gpus")
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
        return None
    clean: list[dict[str, Any]] = []
    for gpu in gpus:
        if not isinstance(gpu, dict):
            return None
        item: dict[str, Any] = {"model": safe_text(gpu.get("model"), 128) or ""}
        for name in FIELDS:
            item[name] = _range(gpu.get(name))
        clean.append(item)
    return {"allowed": raw.get("allowed") is True, "gpus": clean}


def settings_problem(settings: list[dict[str, Any]], limits: Any) -> str | None:
    """Why these per-GPU settings cannot be applied on a server with these limits (None: they
    fit). Settings are in the order of the server's GPUs; fewer entries than GPUs leave the rest
    as they are."""
    if not settings:
        return None
    checked = check_gpu_limits(limits)
    if checked is None or not checked["allowed"]:
        return "the host does not allow GPU settings"
    gpus = checked["gpus"]
    if len(settings) > len(gpus):
        return f"{len(settings)} GPU settings for {len(gpus)} GPUs"
    for index, (wanted, allowed) in enumerate(zip(settings, gpus, strict=False)):
        for name in FIELDS:
            value = wanted.get(name)
            if value is None:
                continue
            bounds = allowed[name]
            if bounds is None:
                return f"GPU {index}: {name} cannot be set on this GPU"
            if not bounds[0] <= value <= bounds[1]:
                return f"GPU {index}: {name} {value} outside {bounds[0]}..{bounds[1]}"
    return None


def snapshot_gpus(limits: Any, gpu_array: list[str]) -> list[dict[str, Any]]:
    """get_gigaspot ``gpus``: per GPU its model and ranges (``[0, 0]`` where unknown)."""
    checked = check_gpu_limits(limits)
    if checked is None:
        return [{"model": name, **{f: [0, 0] for f in FIELDS}} for name in gpu_array]
    return [
        {"model": g["model"], **{f: g[f] if g[f] is not None else [0, 0] for f in FIELDS}}
        for g in checked["gpus"]
    ]
