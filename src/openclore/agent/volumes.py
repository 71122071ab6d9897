"""Renters' volumes on the machine (protocol 3), for the reconciler.

A volume is found by the agent's label (:meth:`openclore.agent.runtime.Runtime.volumes`), so it
outlives its containers, the orders that mounted it and agent restarts. Each pass the reconciler:

1. lists the agent's volumes and makes every desired one that is missing (:meth:`Volumes.ensure`;
   one that cannot be made is tried again after :data:`CREATE_RETRY` seconds);
2. runs the containers, which mount volumes that exist by then;
3. removes the agent's volumes that the last ``desired`` message no longer lists, except one
   that a container still mounts (:meth:`Volumes.prune`): a stopped order's kept container keeps
   its volumes, and the engine would refuse anyway;
4. compares the full list with the last one reported (:meth:`Volumes.report`): a change goes to
   the market in the next ``status`` message.

A ``desired`` message without a ``volumes`` key (an older market) leaves the volumes alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from openclore.agent.runtime import Runtime, RuntimeProblem, Volume
from openclore.protocol import DesiredVolume, VolumeStatus

log = logging.getLogger("openclore.agent.volumes")

CREATE_RETRY = 30.0  # seconds before a volume that could not be made is tried again


def not_enforced(size_gb: int | None) -> str:
    """The note of a volume whose size the volume driver cannot enforce."""
    size = "its size" if size_gb is None else f"its size ({size_gb} GB)"
    return (
        f"{size} is not enforced: the volume driver cannot limit a volume's size on this host "
        "(the local driver needs xfs with project quotas)"
    )


class Volumes:
    """The reconciler's view of the agent's volumes; :meth:`snapshot` and :meth:`take_changes`
    may be called from other threads."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.present: dict[str, Volume] = {}  # as listed at the start of this pass
        self._failed: dict[str, str] = {}  # desired volumes that could not be made: why
        self._next_try: dict[str, float] = {}
        self._lock = threading.Lock()
        self._statuses: dict[str, VolumeStatus] = {}
        self._changed = False

    def ensure(self, desired: list[DesiredVolume] | None) -> None:
        """List the agent's volumes; make the desired ones that are missing."""
        self.present = {v.name: v for v in self.runtime.volumes()}
        if desired is None:
            return
        now = time.monotonic()
        for volume in desired:
            if volume.name in self.present:
                self._failed.pop(volume.name, None)
                continue
            if now < self._next_try.get(volume.name, 0.0):
                continue
            try:
                made = self.runtime.create_volume(volume.name, volume.size_gb)
            except RuntimeProblem as exc:
                log.warning("volume %s: %s", volume.name, exc)
                self._failed[volume.name] = str(exc)
                self._next_try[volume.name] = now + CREATE_RETRY
                continue
            log.info(
                "volume %s made (%d GB, %s)",
                made.name,
                volume.size_gb,
                "size enforced" if made.quota else "size not enforced",
            )
            self.present[made.name] = made
            self._failed.pop(volume.name, None)
            self._next_try.pop(volume.name, None)

    def prune(self, desired: list[DesiredVolume] | None, mounted: Callable[[], set[str]]) -> None:
        """Remove the agent's volumes that ``desired`` does not list, unless mounted."""
        if desired is None:
            return
        wanted = {v.name for v in desired}
        for name in list(self._failed):
            if name not in wanted:
                del self._failed[name]
                self._next_try.pop(name, None)
        extra = sorted(name for name in self.present if name not in wanted)
        if not extra:
            return
        in_use = mounted()
        for name in extra:
            if name in in_use:
                log.debug("volume %s is no longer wanted but still mounted: kept", name)
                continue
            try:
                self.runtime.remove_volume(name)
            except RuntimeProblem as exc:
                log.warning("volume %s not removed: %s", name, exc)
                continue
            log.info("volume %s removed", name)
            del self.present[name]

    def report(self, desired: list[DesiredVolume] | None) -> bool:
        """Whether the full list of volume statuses changed since the last call."""
        asked = {v.name: v.size_gb for v in desired or ()}
        statuses: dict[str, VolumeStatus] = {}
        for name, volume in sorted(self.present.items()):
            notes = []
            if not volume.quota:
                notes.append(not_enforced(volume.size_gb or asked.get(name)))
            size = asked.get(name)
            if size is not None and volume.size_gb is not None and size != volume.size_gb:
                notes.append(f"made with {volume.size_gb} GB: a volume's size does not change")
            statuses[name] = VolumeStatus(
                name=name, ok=True, quota=volume.quota, error="; ".join(notes) or None
            )
        for name, error in sorted(self._failed.items()):
            statuses.setdefault(name, VolumeStatus(name=name, ok=False, error=error))
        with self._lock:
            if statuses == self._statuses:
                return False
            self._statuses = statuses
            self._changed = True
            return True

    def snapshot(self) -> list[VolumeStatus]:
        """The full list, for a hello (a pending change stays pending)."""
        with self._lock:
            return list(self._statuses.values())

    def take_changes(self) -> list[VolumeStatus] | None:
        """The full list when it changed since the last call, else None."""
        with self._lock:
            if not self._changed:
                return None
            self._changed = False
            return list(self._statuses.values())
