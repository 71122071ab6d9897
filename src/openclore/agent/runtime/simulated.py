"""A runtime without Docker, for tests and demos: containers are records in memory.

It behaves like the Docker runtime where the reconciler can tell: images can be missing or
unpullable, containers can crash (:meth:`SimulatedRuntime.crash`), ports collide when reused, and
a new :class:`SimulatedRuntime` sharing the same :class:`SimulatedEngine` sees the containers of
the previous one (an agent restart adopts them).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field, replace

from openclore.agent.runtime import (
    LABEL_AGENT,
    ImageUnavailable,
    LaunchSpec,
    Observed,
    PortTaken,
)


@dataclass
class SimulatedEngine:
    """The state a Docker engine would keep: shared by every runtime built on it."""

    images: set[str] = field(default_factory=set)  # present locally
    pullable: set[str] | None = None  # None: every image can be pulled
    crash_images: set[str] = field(default_factory=set)  # containers of these exit at once
    pulls: list[tuple[str, str | None]] = field(default_factory=list)  # (image, registry login)
    containers: dict[str, Observed] = field(default_factory=dict)
    specs: dict[str, LaunchSpec] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)  # container id -> number of starts
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self) -> str:
        return f"sim{next(self._ids):012d}"


class SimulatedRuntime:
    def __init__(
        self, agent_id: str, engine: SimulatedEngine | None = None, delay: float = 0.0
    ) -> None:
        self.agent_id = agent_id
        self.engine = engine or SimulatedEngine()
        self.delay = delay  # seconds a launch takes, to imitate an engine

    def prepare(self) -> list[str]:
        return ["simulated runtime: no containers are really started"]

    def containers(self) -> list[Observed]:
        with self.engine.lock:
            return [
                replace(c, labels=dict(c.labels), host_ports=dict(c.host_ports))
                for c in self.engine.containers.values()
                if c.labels.get(LABEL_AGENT) == self.agent_id
            ]

    def used_host_ports(self) -> set[int]:
        with self.engine.lock:
            return {
                p
                for c in self.engine.containers.values()
                if c.state == "running"
                for p in c.host_ports.values()
            }

    def has_image(self, image: str) -> bool:
        with self.engine.lock:
            return image in self.engine.images

    def pull(self, image: str, auth: str | None = None) -> None:
        with self.engine.lock:
            self.engine.pulls.append((image, auth))
            if self.engine.pullable is not None and image not in self.engine.pullable:
                raise ImageUnavailable("pull failed")
            self.engine.images.add(image)

    def launch(self, spec: LaunchSpec) -> Observed:
        if self.delay:
            time.sleep(self.delay)
        with self.engine.lock:
            if spec.image not in self.engine.images:
                raise ImageUnavailable("not on this host")
            busy = {
                p
                for c in self.engine.containers.values()
                if c.state == "running"
                for p in c.host_ports.values()
            }
            for binding in spec.ports:
                if binding.host_port in busy:
                    raise PortTaken(f"port {binding.host_port} is already allocated")
            cid = self.engine.new_id()
            observed = Observed(
                id=cid,
                name=spec.name,
                labels=dict(spec.labels),
                state="running",
                host_ports={b.container_port: b.host_port for b in spec.ports},
                started_at=_stamp(),
            )
            if spec.image in self.engine.crash_images:
                observed.state = "exited"
                observed.exit_code = 1
                observed.finished_at = _stamp()
            self.engine.containers[cid] = observed
            self.engine.specs[cid] = spec
            self.engine.starts[cid] = 1
            return replace(observed)

    def start(self, container_id: str, onstart: list[str] | None) -> Observed:
        with self.engine.lock:
            c = self.engine.containers[container_id]
            self.engine.starts[container_id] += 1
            c.started_at = _stamp()
            image = self.engine.specs[container_id].image
            if image in self.engine.crash_images:
                c.state, c.exit_code, c.finished_at = "exited", 1, _stamp()
            else:
                c.state, c.exit_code = "running", None
            return replace(c)

    def remove(self, container_id: str, timeout: float) -> None:
        with self.engine.lock:
            self.engine.containers.pop(container_id, None)

    def logs(self, container_id: str, tail: int) -> str:
        """Plausible output of a simulated container: what a rental's image prints at start,
        then a line per minute it has run; a crashed one ends with its crash."""
        with self.engine.lock:
            c = self.engine.containers.get(container_id)
            if c is None:
                return ""
            spec = self.engine.specs.get(container_id)
            image = spec.image if spec is not None else "image"
            ports = [b.container_port for b in spec.ports] if spec is not None else []
            starts = self.engine.starts.get(container_id, 1)
            running = c.state == "running"
        lines = [f"[simulated] container {container_id} from {image} (start {starts})"]
        if "22" in ports:
            lines.append("Server listening on 0.0.0.0 port 22.")
        for port in ports:
            if port != "22":
                lines.append(f"Listening on 0.0.0.0:{port}")
        try:
            started = float(c.started_at)
        except ValueError:
            started = time.time()
        minutes = int(max(0.0, time.time() - started) // 60)
        for minute in range(max(0, minutes - tail), minutes):
            lines.append(f"[simulated] up {minute + 1} min, load 0.{(minute * 37) % 100:02d}")
        if not running:
            lines.append("simulated crash")
        return "\n".join(lines[-tail:]) + "\n"

    def close(self) -> None:
        pass

    # test helpers

    def crash(self, container_id: str, exit_code: int = 1) -> None:
        with self.engine.lock:
            c = self.engine.containers[container_id]
            c.state, c.exit_code, c.finished_at = "exited", exit_code, _stamp()


def _stamp() -> str:
    return f"{time.time():.6f}"
