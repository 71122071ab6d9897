"""GigaSPOT GPU settings on the host, through NVML (``nvidia-ml-py``): read what each GPU
allows, apply a renter's per-GPU power limit and clock locks/offsets while their order runs, and
put the GPUs back to their defaults afterwards.

Only when the host opts in (``openclore agent --allow-gpu-settings``): otherwise the agent
reports ``allowed: false`` and never calls a setter. Changing power limits and clocks needs root
(or the right capabilities) and a driver that supports it; whatever NVML refuses is reported to
the market (the order shows ``oc_failed``) and whatever had been set is undone. Tests pass a fake
NVML that records calls; a real GPU's settings are only ever changed by a running agent.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

log = logging.getLogger("openclore.agent.gpu")

FIELDS = ("pl", "core_lock", "mem_lock", "core_offset", "mem_offset")


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported, NoPermission, an older driver's missing symbol
        return None


def _pair(value: Any) -> list[int] | None:
    if isinstance(value, tuple | list) and len(value) == 2:
        return [int(value[0]), int(value[1])]
    return None


class GpuTuner:
    """Applies GigaSPOT settings to this machine's GPUs. ``nvml`` is the ``pynvml`` module (or a
    fake with the same functions)."""

    def __init__(self, nvml: Any, *, allowed: bool = True) -> None:
        self.nvml = nvml
        self.allowed = allowed
        self._touched: set[int] = set()
        self._defaults: dict[int, int] = {}  # GPU index -> default power limit (mW)

    # ------------------------------------------------------------------ read path

    def limits(self) -> dict[str, Any]:
        """``{"allowed", "gpus": [{model, pl, core_lock, mem_lock, core_offset, mem_offset}]}``:
        what each GPU allows, ranges as ``[min, max]`` (W, MHz) or None. Reads only."""
        nvml = self.nvml
        gpus: list[dict[str, Any]] = []
        try:
            nvml.nvmlInit()
        except Exception as exc:
            log.info("GPU settings: NVML unavailable (%s)", str(exc).splitlines()[0][:200])
            return {"allowed": False, "gpus": []}
        try:
            for index in range(int(nvml.nvmlDeviceGetCount())):
                h = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _try(nvml.nvmlDeviceGetName, h) or ""
                if isinstance(name, bytes):
                    name = name.decode("utf-8", "replace")
                pl = _pair(_try(nvml.nvmlDeviceGetPowerManagementLimitConstraints, h))
                core_max = _try(nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_GRAPHICS)
                mem_max = _try(nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_MEM)
                gpus.append(
                    {
                        "model": str(name).strip()[:128],
                        "pl": None if pl is None else [pl[0] // 1000, pl[1] // 1000],
                        "core_lock": None if not core_max else [0, int(core_max)],
                        "mem_lock": None if not mem_max else [0, int(mem_max)],
                        "core_offset": _pair(_try(nvml.nvmlDeviceGetGpcClkMinMaxVfOffset, h)),
                        "mem_offset": _pair(_try(nvml.nvmlDeviceGetMemClkMinMaxVfOffset, h)),
                    }
                )
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
        return {"allowed": self.allowed and bool(gpus), "gpus": gpus}

    def current(self) -> list[dict[str, Any]]:
        """The current power limit (W) and clock offsets of each GPU. Reads only."""
        nvml = self.nvml
        nvml.nvmlInit()
        try:
            out = []
            for index in range(int(nvml.nvmlDeviceGetCount())):
                h = nvml.nvmlDeviceGetHandleByIndex(index)
                limit = _try(nvml.nvmlDeviceGetPowerManagementLimit, h)
                out.append(
                    {
                        "pl": None if limit is None else int(limit) // 1000,
                        "core_offset": _try(nvml.nvmlDeviceGetGpcClkVfOffset, h),
                        "mem_offset": _try(nvml.nvmlDeviceGetMemClkVfOffset, h),
                    }
                )
            return out
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()

    # ------------------------------------------------------------------ apply path

    def apply(self, settings: list[dict[str, Any]]) -> str | None:
        """Set each GPU (in order) as asked; None when every setting took, else why not (and
        the GPUs are back to their defaults)."""
        if not settings:
            self.restore()
            return None
        if not self.allowed:
            return "the host does not allow GPU settings"
        limits = self.limits()["gpus"]
        if len(settings) > len(limits):
            return f"{len(settings)} GPU settings for {len(limits)} GPUs"
        for index, (wanted, allowed) in enumerate(zip(settings, limits, strict=False)):
            for name in FIELDS:
                value = wanted.get(name)
                if value is None:
                    continue
                bounds = allowed.get(name)
                if bounds is None or not bounds[0] <= value <= bounds[1]:
                    return f"GPU {index}: {name} {value} is not allowed here"
        nvml = self.nvml
        nvml.nvmlInit()
        try:
            self._restore_all()
            for index, wanted in enumerate(settings):
                h = nvml.nvmlDeviceGetHandleByIndex(index)
                self._touched.add(index)
                if wanted.get("pl") is not None:
                    if index not in self._defaults:
                        default = _try(nvml.nvmlDeviceGetPowerManagementDefaultLimit, h)
                        if default is not None:
                            self._defaults[index] = int(default)
                    nvml.nvmlDeviceSetPowerManagementLimit(h, round(wanted["pl"] * 1000))
                if wanted.get("core_lock") is not None:
                    nvml.nvmlDeviceSetGpuLockedClocks(h, wanted["core_lock"], wanted["core_lock"])
                if wanted.get("mem_lock") is not None:
                    nvml.nvmlDeviceSetMemoryLockedClocks(h, wanted["mem_lock"], wanted["mem_lock"])
                if wanted.get("core_offset") is not None:
                    nvml.nvmlDeviceSetGpcClkVfOffset(h, wanted["core_offset"])
                if wanted.get("mem_offset") is not None:
                    nvml.nvmlDeviceSetMemClkVfOffset(h, wanted["mem_offset"])
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            log.warning("GPU settings refused: %s; restoring defaults", reason)
            self._restore_all()
            return f"refused by the driver: {reason}"
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
        return None

    def restore(self) -> None:
        """Put every GPU this tuner changed back to its defaults."""
        if not self._touched:
            return
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except Exception:
            return
        try:
            self._restore_all()
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()

    def _restore_all(self) -> None:
        nvml = self.nvml
        for index in sorted(self._touched):
            h = _try(nvml.nvmlDeviceGetHandleByIndex, index)
            if h is None:
                continue
            default = self._defaults.get(index)
            if default is not None:
                _try(nvml.nvmlDeviceSetPowerManagementLimit, h, default)
            _try(nvml.nvmlDeviceResetGpuLockedClocks, h)
            _try(nvml.nvmlDeviceResetMemoryLockedClocks, h)
            _try(nvml.nvmlDeviceSetGpcClkVfOffset, h, 0)
            _try(nvml.nvmlDeviceSetMemClkVfOffset, h, 0)
        self._touched.clear()
