"""Container runtimes for the host agent: one interface, a Docker implementation and a simulated
one for tests. The reconciler (:mod:`openclore.agent.reconcile`) decides *what* runs; a runtime
only knows *how* to run a container described by a :class:`LaunchSpec`.

Containers are found by label, never by the agent's memory, so a restarted agent adopts what is
already running instead of killing it. So are renters' volumes (:meth:`Runtime.volumes`), which
outlive containers, orders and agent restarts, and the images the reconciler commits to carry a
kept container's files into a new one (``openclore-keep/<key>``, see
:mod:`openclore.agent.reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

LABEL_AGENT = "openclore.agent"  # the agent instance that owns the container
LABEL_KEY = "openclore.key"  # the desired container's key ("order-12", "bg-3-1")
LABEL_KIND = "openclore.kind"  # "order" | "background"
LABEL_ORDER = "openclore.order"  # the order id (orders only)
LABEL_SPEC = "openclore.spec"  # hash of the desired spec: a change means a new container
LABEL_HTTP = "openclore.http"  # the container port served over HTTP, if any
LABEL_GENERATION = "openclore.generation"  # the order's resets so far when it was created
LABEL_BASE = "openclore.base"  # the committed image (id) the container was created from
LABEL_KEEP = "openclore.keep"  # on a committed image: the key whose files it carries
LABEL_SIZE = "openclore.size_gb"  # on a volume: the size it was asked for
# the digest of the order's image the container was created from (see Runtime.image_digest); a
# container made from a committed image inherits it from that image's labels
LABEL_DIGEST = "openclore.image_digest"


@dataclass(frozen=True)
class PortBinding:
    container_port: str
    host_port: int
    host_ip: str
    kind: str  # "tcp" (published for renters) | "http" (for the host's HTTP proxy)


@dataclass(frozen=True)
class FileSpec:
    path: str  # absolute path in the container
    content: bytes
    mode: int = 0o644


@dataclass
class LaunchSpec:
    name: str
    image: str
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[PortBinding] = field(default_factory=list)
    entrypoint: list[str] | None = None
    command: list[str] | None = None
    files: list[FileSpec] = field(default_factory=list)  # copied in before the first start
    onstart: list[str] | None = None  # run (detached) in the container after every start
    gpus: bool = False  # the agent gives rentals GPUs (it has GPUs and the NVIDIA runtime)
    gpu_ids: list[int] | None = None  # with gpus: exactly these NVML indices; None: all of them
    cpuset_cpus: str | None = None  # "0-3": the CPUs a per-GPU rental is pinned to
    disk_share: tuple[int, int] | None = None  # k of n: that part of the runtime's disk quota
    disk_gb: int | None = None  # the rental's disk (writable layer) size; over disk_share
    mounts: dict[str, str] = field(default_factory=dict)  # volume name -> path, read-write
    cpus: float | None = None
    memory: int | None = None  # bytes
    shm_size: int | None = None  # bytes


@dataclass
class Observed:
    """A container as the engine sees it."""

    id: str
    name: str
    labels: dict[str, str]
    state: str  # created | running | exited | restarting | paused | dead | removing
    exit_code: int | None = None
    host_ports: dict[str, int] = field(default_factory=dict)  # container port -> host port
    started_at: str = ""
    finished_at: str = ""
    oom_killed: bool = False
    error: str | None = None  # the engine's own error for the last start, if any
    mounts: dict[str, str] = field(default_factory=dict)  # volume name -> path in the container

    @property
    def key(self) -> str:
        return self.labels.get(LABEL_KEY, "")


@dataclass(frozen=True)
class Volume:
    """A volume of this agent as the engine holds it."""

    name: str
    size_gb: int | None  # as asked when it was created (None: unknown)
    quota: bool  # the size is enforced by the volume driver


class RuntimeProblem(Exception):
    """Something the renter or host should read: it ends up in my_orders' ``error``."""


class ImageUnavailable(RuntimeProblem):
    """The image is neither on the host nor pullable. The message is a generic reason ("pull
    failed"; the reconciler reports "image <image> is unavailable: <reason>"): the engine's own
    error text stays in the host's log, since it can tell a renter what the host's network looks
    like (which ports are open)."""


class ImageRefused(ImageUnavailable):
    """The image names a registry the host's engine must not contact (see
    :mod:`openclore.agent.images`), or is not a valid reference: refused before any pull."""


class LaunchFailed(RuntimeProblem):
    """The engine refused to create or start the container."""


class PortTaken(LaunchFailed):
    """A chosen host port turned out to be in use: choose another."""


class Runtime(Protocol):
    def prepare(self) -> list[str]:
        """Create what containers need (network, isolation rules); returns notes to log."""
        ...

    def containers(self) -> list[Observed]:
        """This agent's containers (by label), running or not."""
        ...

    def used_host_ports(self) -> set[int]:
        """Host ports published by any container on this engine."""
        ...

    def has_image(self, image: str) -> bool: ...

    def pull(self, image: str, auth: str | None = None) -> None:
        """Pull ``image``; ``auth`` ("user:password") is the registry login for this pull only,
        never stored or logged."""
        ...

    def launch(self, spec: LaunchSpec) -> Observed:
        """Create, copy files in, start, run ``onstart``."""
        ...

    def start(self, container_id: str, onstart: list[str] | None) -> Observed: ...

    def stop(self, container_id: str, timeout: float) -> Observed:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` seconds) and keep the container with its
        writable layer: :meth:`start` runs it again."""
        ...

    def restart(self, container_id: str, timeout: float, onstart: list[str] | None) -> Observed:
        """Stop as :meth:`stop` does (a stopped one is just started), start, run ``onstart``."""
        ...

    def remove(self, container_id: str, timeout: float) -> None:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` seconds) and remove."""
        ...

    def commit(self, container_id: str, image: str, labels: dict[str, str]) -> str:
        """A local image ``image`` ("repository:tag") of the container as it is now (its
        writable layer included), with ``labels`` besides the container's own; returns its id."""
        ...

    def image_id(self, image: str) -> str | None:
        """The id of the local image ``image``; None when it is not on this host."""
        ...

    def image_digest(self, image: str) -> str | None:
        """What identifies the local image ``image`` wherever it came from: its repository digest
        (``repo@sha256:…``, the one of its own repository when it has several), else its id
        (``sha256:…``: an image built or imported on this host); None when it is not here."""
        ...

    def remove_image(self, image: str) -> None:
        """Remove a local image (a name or an id) unless a container still uses it (then it stays:
        raises :class:`RuntimeProblem`); untagged images it was made from go with it."""
        ...

    def volumes(self) -> list[Volume]:
        """This agent's volumes (by label)."""
        ...

    def create_volume(self, name: str, size_gb: int) -> Volume:
        """A volume of ``size_gb`` labelled as this agent's; its size is enforced where the
        volume driver can (``quota``), else it is created all the same."""
        ...

    def remove_volume(self, name: str) -> None:
        """Remove a volume and its data; :class:`RuntimeProblem` while a container mounts it."""
        ...

    def logs(self, container_id: str, tail: int) -> str: ...

    def close(self) -> None: ...
