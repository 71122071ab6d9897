"""A runtime without Docker, for tests and demos: containers are records in memory.

It behaves like the Docker runtime where the reconciler can tell: images can be missing or
unpullable, containers can crash (:meth:`SimulatedRuntime.crash`), ports collide when reused, and
a new :class:`SimulatedRuntime` sharing the same :class:`SimulatedEngine` sees the containers of
the previous one (an agent restart adopts them).

Files stand for a container's disk: :meth:`SimulatedRuntime.write` puts a file in a container's
writable layer, or in a volume when the path lies under one of its mounts; a committed image
carries the layer into the containers created from it, and volumes outlive containers.
"""

from __future__ import annotations

import hashlib
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
    RuntimeProblem,
    Volume,
)


@dataclass
class SimulatedVolume:
    name: str
    size_gb: int
    labels: dict[str, str]
    quota: bool
    files: dict[str, str] = field(default_factory=dict)  # path in the volume -> content


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
    stops: dict[str, int] = field(default_factory=dict)  # container id -> stops (kept)
    restarts: dict[str, int] = field(default_factory=dict)  # container id -> restarts
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # container id -> its layer
    image_ids: dict[str, str] = field(default_factory=dict)  # committed image name -> id
    image_files: dict[str, dict[str, str]] = field(default_factory=dict)  # image -> its files
    image_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    volumes: dict[str, SimulatedVolume] = field(default_factory=dict)
    volume_quota: bool = True  # the volume driver enforces sizes
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self) -> str:
        return f"sim{next(self._ids):012d}"

    def resolve(self, image: str) -> str:
        return self.image_ids.get(image, image)


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
                replace(
                    c, labels=dict(c.labels), host_ports=dict(c.host_ports), mounts=dict(c.mounts)
                )
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
            return self.engine.resolve(image) in self.engine.images

    def image_id(self, image: str) -> str | None:
        with self.engine.lock:
            found = self.engine.resolve(image)
            return found if found in self.engine.images else None

    def image_digest(self, image: str) -> str | None:
        """Like Docker's for an image without a repository digest: its id, made up here."""
        with self.engine.lock:
            found = self.engine.resolve(image)
            if found not in self.engine.images:
                return None
            return "sha256:" + hashlib.sha256(found.encode()).hexdigest()

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
            image = self.engine.resolve(spec.image)
            if image not in self.engine.images:
                raise ImageUnavailable("not on this host")
            for name in spec.mounts:
                if name not in self.engine.volumes:  # Docker would make an unlabelled one
                    raise RuntimeProblem(f"volume {name} does not exist")
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
                # as Docker does: the image's labels (a committed one's), then the container's
                labels={**self.engine.image_labels.get(image, {}), **spec.labels},
                state="running",
                host_ports={b.container_port: b.host_port for b in spec.ports},
                started_at=_stamp(),
                mounts=dict(spec.mounts),
            )
            if spec.image in self.engine.crash_images:
                observed.state = "exited"
                observed.exit_code = 1
                observed.finished_at = _stamp()
            self.engine.containers[cid] = observed
            self.engine.specs[cid] = spec
            self.engine.starts[cid] = 1
            self.engine.files[cid] = dict(self.engine.image_files.get(image, {}))
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

    def stop(self, container_id: str, timeout: float) -> Observed:
        with self.engine.lock:
            c = self.engine.containers[container_id]
            if c.state == "running":
                self.engine.stops[container_id] = self.engine.stops.get(container_id, 0) + 1
                c.state, c.exit_code, c.finished_at = "exited", 143, _stamp()
            return replace(c)

    def restart(self, container_id: str, timeout: float, onstart: list[str] | None) -> Observed:
        with self.engine.lock:
            self.engine.restarts[container_id] = self.engine.restarts.get(container_id, 0) + 1
        return self.start(container_id, onstart)

    def remove(self, container_id: str, timeout: float) -> None:
        with self.engine.lock:
            self.engine.containers.pop(container_id, None)
            self.engine.files.pop(container_id, None)

    def commit(self, container_id: str, image: str, labels: dict[str, str]) -> str:
        with self.engine.lock:
            c = self.engine.containers[container_id]
            image_id = f"simimg{next(self.engine._ids):012d}"
            self.engine.images.add(image_id)
            self.engine.image_ids[image] = image_id
            self.engine.image_files[image_id] = dict(self.engine.files.get(container_id, {}))
            self.engine.image_labels[image_id] = {**c.labels, **labels}
            return image_id

    def remove_image(self, image: str) -> None:
        with self.engine.lock:
            image_id = self.engine.resolve(image)
            if any(
                self.engine.resolve(self.engine.specs[cid].image) == image_id
                for cid in self.engine.containers
            ):
                raise RuntimeProblem(f"image {image} is used by a container")
            self.engine.images.discard(image_id)
            self.engine.image_files.pop(image_id, None)
            self.engine.image_labels.pop(image_id, None)
            for name, target in list(self.engine.image_ids.items()):
                if target == image_id:
                    del self.engine.image_ids[name]

    def volumes(self) -> list[Volume]:
        with self.engine.lock:
            return [
                Volume(v.name, v.size_gb, v.quota)
                for v in self.engine.volumes.values()
                if v.labels.get(LABEL_AGENT) == self.agent_id
            ]

    def create_volume(self, name: str, size_gb: int) -> Volume:
        with self.engine.lock:
            volume = self.engine.volumes.get(name)
            if volume is None:
                volume = SimulatedVolume(
                    name, size_gb, {LABEL_AGENT: self.agent_id}, self.engine.volume_quota
                )
                self.engine.volumes[name] = volume
            elif volume.labels.get(LABEL_AGENT) != self.agent_id:
                raise RuntimeProblem(f"a volume {name} exists that is not this agent's")
            return Volume(volume.name, volume.size_gb, volume.quota)

    def remove_volume(self, name: str) -> None:
        with self.engine.lock:
            if any(name in c.mounts for c in self.engine.containers.values()):
                raise RuntimeProblem(f"volume {name} is in use")
            self.engine.volumes.pop(name, None)

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

    def write(self, container_id: str, path: str, content: str) -> None:
        """A file written in the container: into a volume under a mount, else its layer."""
        with self.engine.lock:
            place, rel = self._place(container_id, path)
            place[rel] = content

    def read(self, container_id: str, path: str) -> str | None:
        with self.engine.lock:
            place, rel = self._place(container_id, path)
            return place.get(rel)

    def _place(self, container_id: str, path: str) -> tuple[dict[str, str], str]:
        c = self.engine.containers[container_id]
        for name, target in c.mounts.items():
            prefix = target.rstrip("/") + "/"
            if path.startswith(prefix):
                return self.engine.volumes[name].files, path[len(prefix) :]
        return self.engine.files.setdefault(container_id, {}), path


def _stamp() -> str:
    return f"{time.time():.6f}"
