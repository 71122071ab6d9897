"""Desired containers (from the market) against actual ones (from the runtime), in one thread.

The reconciler never acts before the server has said what it wants: a restarted agent first
adopts and reports what runs (found by label), and only removes a container once a desired set
without it arrives. While the agent is disconnected the last desired set stays in force, so
rentals keep running through network cuts and server restarts.

Container conventions (the way common GPU-cloud images expect their settings):

- the order's ``env`` as environment variables, plus ``JUPYTER_TOKEN`` (read by Jupyter itself),
  ``SSH_PASSWORD`` and ``ROOT_PASSWORD``, ``SSH_KEY`` and ``PUBLIC_KEY`` (the names images on
  Clore, RunPod and vast.ai read), and ``OPENCLORE_ORDER_ID`` / ``OPENCLORE_TCP_PORTS``;
- ``command`` is Clore's onstart script: written to ``/root/onstart.sh`` and run in the
  background after every start of the container (output in ``/var/log/onstart.log``), while the
  image's own entrypoint stays the main process; a command without ``#!`` runs with ``/bin/sh``;
- ``autossh_entrypoint``: the image's entrypoint is replaced by a small POSIX shell script
  (``/bin/sh -c``) that writes ``/root/onstart.sh``, puts ``SSH_KEY`` into
  ``/root/.ssh/authorized_keys``, sets the root password from
  ``SSH_PASSWORD``, starts ``sshd`` (installing openssh-server with apt/apk/dnf when missing and
  the network allows), runs ``/root/onstart.sh`` and then keeps the container alive;
- the container runs with an init process (``init=True``), the host's NVIDIA GPUs when it has
  any, the CPU and memory limits of the agent's settings, on the agent's isolated network, and
  hardened by the runtime (:class:`openclore.agent.runtime.docker.Hardening`);
- a per-GPU rental (``gpus`` and ``share`` set) gets only its GPUs (``NVIDIA_VISIBLE_DEVICES``
  set to them, over any value of the renter's) and k/n of the machine: its own CPUs, memory and
  disk (:mod:`openclore.agent.share`);
- an image that cannot be used is reported as ``image <image> is unavailable: <reason>`` with
  the runtime's generic reason (never the engine's own text).
- each container is labelled with the digest of the order's image it was created from
  (``openclore.image_digest``: :meth:`Runtime.image_digest`, the repository digest, else the
  image's id) and reports it as ``image_digest``; a container made from committed files
  inherits the label from the committed image.

Keeping work (protocol 3):

- ``stopped``: the container is stopped (SIGTERM, then SIGKILL after the stop timeout) and kept
  with its writable layer, reported as ``halted`` with its ports; it is neither a crash nor
  started again. A desired container that is stopped and has no container is not launched
  (``halted``, with the ports it had when known). When ``stopped`` turns false the same
  container is started (onstart runs again), so the files written before are there. A restarted
  agent adopts a stopped container and keeps it while the desired set says stopped;
- a changed spec (new GPUs, disk size, volumes…) of an order's container keeps the renter's
  files. The old container is stopped and committed (``docker commit``) into a local image
  ``openclore-keep/<key>:g<generation>-<agent>`` (:func:`openclore.agent.launch.keep_image`;
  labelled as the agent's, with the key and the generation); the old container is removed (it
  holds the name and the host ports); the new one is created from that image with the new spec
  (its labels, env and limits over those of the old container that the image holds) on the same
  host ports where they are free, and started. The committed image is removed as soon as the
  engine allows it: an image a container stands on cannot be deleted (a forced removal would only
  untag it and leave it behind), so it goes when the container made from it is removed (the order
  ends, or the next change commits a newer image on top of it, whose removal takes its untagged
  parents along). A commit that fails leaves the old container in place (``error``, tried again
  later); an image committed by an agent that stopped before the new container was made is found
  again by its name. A stopped container whose spec changes is kept as it is while stopped and
  carried over when it starts again. A background job is never carried;
- a reset (a new ``generation``) is the one spec change that starts again from the order's
  image: nothing is committed (a stopped container is removed at once), the host ports are kept
  where free;
- ``restart``: a number that grows with the renter's restarts; each new one restarts the
  container once (stop, start, onstart) and is reported back as ``restarted``. A launch or a
  start after a stop counts as that restart. The numbers carried out are kept in memory only: a
  restarted agent may restart a container once more, never in a loop;
- volumes (:mod:`openclore.agent.volumes`): made before the containers that mount them
  (``mounts``, read-write), removed when no longer desired unless mounted, reported in full;
- ``disk_gb``: the container's disk size where the storage driver can set one (the runtime says
  so when it cannot), over the k/n share of the host's quota.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field, replace
from typing import Any

from openclore.agent.gpu import GpuTuner
from openclore.agent.launch import (
    AUTOSSH_ENTRYPOINT as AUTOSSH_ENTRYPOINT,
)
from openclore.agent.launch import (
    ONSTART_PATH as ONSTART_PATH,
)
from openclore.agent.launch import (
    RUN_ONSTART as RUN_ONSTART,
)
from openclore.agent.launch import (
    ReconcileSettings as ReconcileSettings,
)
from openclore.agent.launch import (
    keep_image,
    launch_spec,
    onstart,
)
from openclore.agent.launch import (
    onstart_script as onstart_script,
)
from openclore.agent.runtime import (
    LABEL_AGENT,
    LABEL_BASE,
    LABEL_DIGEST,
    LABEL_GENERATION,
    LABEL_HTTP,
    LABEL_KEEP,
    LABEL_KIND,
    LABEL_ORDER,
    LABEL_SPEC,
    ImageUnavailable,
    LaunchFailed,
    LaunchSpec,
    Observed,
    PortBinding,
    PortTaken,
    Runtime,
    RuntimeProblem,
)
from openclore.agent.volumes import Volumes
from openclore.protocol import (
    CRASH_LOOP,
    ERROR,
    HALTED,
    KIND_ORDER,
    PULLING,
    RESTARTING,
    RUNNING,
    STARTING,
    STOPPED,
    ContainerStatus,
    DesiredContainer,
    DesiredVolume,
    VolumeStatus,
)

log = logging.getLogger("openclore.agent.reconcile")

PARTIAL_GPU_SETTINGS = "GPU settings are applied to whole-server rentals only"
CRASH_WINDOW = 600.0  # seconds over which exits count towards a crash loop
CRASH_LOOP_AFTER = 3  # exits within the window
MAX_RESTART_DELAY = 60.0
IMAGE_RETRY_MAX = 300.0


@dataclass
class _Retry:
    next_at: float = 0.0
    delay: float = 0.0


@dataclass
class _Crashes:
    exits: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # finished_at stamps already counted


class Reconciler:
    """Runs the reconcile loop in a daemon thread; thread-safe setters and getters."""

    def __init__(
        self,
        runtime: Runtime,
        settings: ReconcileSettings,
        on_change: Callable[[], None] | None = None,
        gpu: GpuTuner | None = None,
    ) -> None:
        self.runtime = runtime
        self.gpu = gpu
        # GigaSPOT: the settings applied now (container key, settings) and each key's outcome
        self._gpu_applied: tuple[str, str] | None = None
        self._gpu_result: dict[str, tuple[bool, str | None]] = {}
        self.settings = settings
        self.on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._desired: list[DesiredContainer] | None = None
        self._desired_volumes: list[DesiredVolume] | None = None
        self.volumes = Volumes(runtime)
        self._restarted: dict[str, int] = {}  # key -> the last restart number carried out
        self._halted: set[str] = set()  # keys stopped on purpose: their next start is no crash
        self._ports: dict[str, dict[str, int]] = {}  # key -> its last host ports, to reuse
        self._statuses: dict[str, ContainerStatus] = {}
        self._pending: dict[str, ContainerStatus] = {}
        self._retries: dict[str, _Retry] = {}
        self._crashes: dict[str, _Crashes] = {}
        self._port_cursor = settings.port_range[0]
        self._thread: threading.Thread | None = None
        self.passes = 0

    # ------------------------------------------------------------------ interface

    def set_desired(
        self, containers: list[DesiredContainer], volumes: list[DesiredVolume] | None = None
    ) -> None:
        """The server's desired set; ``volumes`` None (an older server) leaves volumes alone."""
        with self._lock:
            self._desired = list(containers)
            self._desired_volumes = None if volumes is None else list(volumes)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="openclore-reconcile", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reconciling; the containers stay as they are."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self) -> list[ContainerStatus]:
        """Every status worth telling a server that just (re)connected (pending changes stay
        pending until :meth:`take_changes`: a hello that fails to go out loses nothing)."""
        with self._lock:
            return list({**self._statuses, **self._pending}.values())

    def take_changes(self) -> list[ContainerStatus]:
        with self._lock:
            changes = list(self._pending.values())
            self._pending.clear()
            return changes

    def statuses(self) -> dict[str, ContainerStatus]:
        with self._lock:
            return dict(self._statuses)

    def volume_snapshot(self) -> list[VolumeStatus]:
        """Every volume the agent holds (or failed to make), for a hello."""
        return self.volumes.snapshot()

    def take_volume_changes(self) -> list[VolumeStatus] | None:
        """The full volume list when it changed since it was last taken, else None."""
        return self.volumes.take_changes()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # the engine may be restarting: try again next pass
                log.exception("reconcile pass failed")
            self._wake.wait(self.settings.poll_interval)
            self._wake.clear()

    def reconcile_once(self) -> None:
        self.passes += 1
        with self._lock:
            desired = None if self._desired is None else list(self._desired)
            volumes = None if desired is None else self._desired_volumes
        self.volumes.ensure(volumes)
        observed = self.runtime.containers()
        by_key: dict[str, list[Observed]] = {}
        for c in observed:
            by_key.setdefault(c.key, []).append(c)
        if desired is None:
            # not yet told what to run: adopt and report, change nothing
            for key, containers in by_key.items():
                self._report_observed(key, _best(containers), None)
            self._report_volumes(None)
            return
        wanted = {d.key: d for d in desired}
        for key, containers in by_key.items():
            d = wanted.get(key)
            keep = _best(containers) if d is not None else None
            for c in containers:
                if c is keep:
                    continue
                self._remove(c)
                if d is None:
                    self._set(
                        ContainerStatus(
                            key=key,
                            kind=c.labels.get(LABEL_KIND, KIND_ORDER),
                            state=STOPPED,
                            order_id=_order_id(c),
                        )
                    )
            by_key[key] = [keep] if keep is not None else []
        for d in desired:
            current = by_key.get(d.key) or []
            if self._stop.is_set():
                return
            found = current[0] if current else None
            if found is not None and found.labels.get(LABEL_SPEC) != d.spec_hash():
                reset = _generation(found) != d.generation
                if not d.stopped or reset:
                    if not self._replace(d, found, reset):
                        continue  # could not keep its files: tried again later
                    found = None
                # else: kept as it is while stopped, carried over when it starts again
            if d.stopped:
                self._halt(d, found)
            elif found is None:
                self._launch(d)
            else:
                self._check(d, found)
        self._tune_gpus(desired)
        self.volumes.prune(volumes, lambda: self._mounted(desired))
        self._report_volumes(volumes)
        # forget what is neither wanted nor present (its STOPPED status has been queued)
        with self._lock:
            for key in list(self._statuses):
                if key not in wanted:
                    del self._statuses[key]
        _forget(self._retries, wanted)
        _forget(self._crashes, wanted)
        _forget(self._gpu_result, wanted)
        _forget(self._restarted, wanted)
        _forget(self._ports, wanted)
        self._halted &= set(wanted)

    def _report_volumes(self, volumes: list[DesiredVolume] | None) -> None:
        if self.volumes.report(volumes):
            self.on_change()

    def _mounted(self, desired: list[DesiredContainer]) -> set[str]:
        """Volumes a container of this agent mounts (or a desired one will)."""
        names = {name for d in desired for name in d.mounts}
        names.update(name for c in self.runtime.containers() for name in c.mounts)
        return names

    # ------------------------------------------------------------------ GPU settings

    def _tune_gpus(self, desired: list[DesiredContainer]) -> None:
        """The running order's GigaSPOT settings on the GPUs; the defaults when none runs.
        Only a whole-machine order's: the tuner numbers settings from GPU 0, so a per-GPU
        rental's settings would reach GPUs that other rentals hold; they are refused."""
        for d in desired:
            if d.gpu_settings and d.gpus is not None and d.key not in self._gpu_result:
                self._gpu_result[d.key] = (False, PARTIAL_GPU_SETTINGS)
                with self._lock:
                    current = self._statuses.get(d.key)
                if current is not None:
                    self._set(
                        replace(
                            current,
                            gpu_settings_applied=False,
                            gpu_settings_error=PARTIAL_GPU_SETTINGS,
                        )
                    )
        with self._lock:
            running = {k for k, st in self._statuses.items() if st.state == RUNNING}
        target = next(
            (
                d
                for d in desired
                if d.gpu_settings and d.key in running and d.kind == KIND_ORDER and d.gpus is None
            ),
            None,
        )
        wanted = None if target is None else (target.key, json.dumps(target.gpu_settings))
        if wanted == self._gpu_applied:
            return
        if target is None:
            if self.gpu is not None:
                self.gpu.restore()
            self._gpu_applied = None
            return
        assert wanted is not None
        if self.gpu is None:
            problem: str | None = "the host does not allow GPU settings"
        else:
            problem = self.gpu.apply(target.gpu_settings)
        self._gpu_applied = wanted
        self._gpu_result[target.key] = (problem is None, problem)
        with self._lock:
            current = self._statuses.get(target.key)
        if current is not None:
            self._set(
                replace(current, gpu_settings_applied=problem is None, gpu_settings_error=problem)
            )

    # ------------------------------------------------------------------ actions

    def _launch(self, d: DesiredContainer) -> None:
        retry = self._retries.get(d.key)
        if retry is not None and time.monotonic() < retry.next_at:
            return
        missing = sorted(name for name in d.mounts if name not in self.volumes.present)
        if missing:
            self._fail(d, f"volume {missing[0]} is not on this machine")
            return
        try:
            base = self._carried_image(d)
            if base is None and not self.runtime.has_image(d.image):
                self._set(self._status(d, PULLING))
                self.runtime.pull(d.image, auth=d.registry_auth)
            self._set(self._status(d, STARTING))
            digest = None if base is not None else self._digest(d.image)
            exclude: set[int] = set()
            for _attempt in range(5):
                bindings = self._allocate(d, exclude)
                try:
                    observed = self.runtime.launch(self.launch_spec(d, bindings, base, digest))
                    break
                except PortTaken:
                    exclude.update(b.host_port for b in bindings)
            else:
                raise LaunchFailed("no free host port found after 5 attempts")
        except ImageUnavailable as exc:  # a generic reason: the engine's text is in the log
            self._fail(d, f"image {d.image} is unavailable: {exc}")
            return
        except RuntimeProblem as exc:
            self._fail(d, str(exc))
            return
        self._retries.pop(d.key, None)
        self._started(d)
        source = d.image if base is None else f"its kept files ({base[:19]})"
        log.info("started %s (%s) from %s", d.key, observed.id[:12], source)
        self._report_observed(d.key, observed, d)

    def _digest(self, image: str) -> str | None:
        """The digest of the order's image as it is on the host now (None: unknown; the
        container runs all the same)."""
        try:
            return self.runtime.image_digest(image)
        except RuntimeProblem as exc:
            log.warning("digest of %s unknown: %s", image, exc)
            return None

    def _carried_image(self, d: DesiredContainer) -> str | None:
        """The committed image (its id) an order's new container is made from, with the files
        of its previous container, or None: from the order's image. Found by its name, so that
        an image committed by an agent process that stopped before the new container was made
        is used all the same; a reset's new generation never finds the files of before it."""
        if d.kind != KIND_ORDER:
            return None
        return self.runtime.image_id(keep_image(d.key, d.generation, self.settings.agent_id))

    def _replace(self, d: DesiredContainer, c: Observed, reset: bool) -> bool:
        """``c`` no longer has ``d``'s spec: remove it, after committing its files unless this
        is a reset (or not an order). False when its files could not be kept (it stays)."""
        retry = self._retries.get(d.key)
        if retry is not None and time.monotonic() < retry.next_at:
            return False
        if c.host_ports:
            self._ports[d.key] = dict(c.host_ports)
        agent = self.settings.agent_id
        if not reset and d.kind == KIND_ORDER and c.labels.get(LABEL_KIND) == KIND_ORDER:
            image = keep_image(d.key, d.generation, agent)
            labels = {LABEL_AGENT: agent, LABEL_KEEP: d.key, LABEL_GENERATION: str(d.generation)}
            try:
                if c.state in ("running", "restarting", "paused"):
                    self.runtime.stop(c.id, self.settings.stop_timeout)
                self.runtime.commit(c.id, image, labels)
            except RuntimeProblem as exc:
                self._fail(d, f"its files could not be kept for its new settings: {exc}")
                return False
            log.info("%s: files of %s kept in %s for its new settings", d.key, c.id[:12], image)
        self._remove(c)
        if reset:  # an image of the previous generation that no container was made from
            self._discard_image(keep_image(d.key, _generation(c), agent))
        return True

    def _halt(self, d: DesiredContainer, c: Observed | None) -> None:
        """A stopped order: its container stopped and kept, not launched when there is none."""
        self._halted.add(d.key)
        self._crashes.pop(d.key, None)
        if c is None:
            self._set(self._status(d, HALTED, host_ports=self._ports.get(d.key)))
            return
        if c.state in ("running", "restarting", "paused"):
            try:
                c = self.runtime.stop(c.id, self.settings.stop_timeout)
            except RuntimeProblem as exc:
                self._set(self._status(d, RUNNING, error=str(exc), observed=c))
                return
            log.info("stopped %s (%s), kept with its disk", d.key, c.id[:12])
        self._set(self._status(d, HALTED, observed=c))

    def _restart(self, d: DesiredContainer, c: Observed) -> None:
        """The renter's restart number ``d.restart``, carried out once."""
        self._restarted[d.key] = d.restart
        log.info("restarting %s (%s): restart %d", d.key, c.id[:12], d.restart)
        try:
            started = self.runtime.restart(c.id, self.settings.stop_timeout, self._onstart(d))
        except RuntimeProblem as exc:
            self._set(self._status(d, RESTARTING, error=f"restart failed: {exc}", observed=c))
            return
        self._report_observed(d.key, started, d)

    def _started(self, d: DesiredContainer) -> None:
        """``d`` was just launched or started after a stop: that was any restart asked."""
        self._halted.discard(d.key)
        if d.restart:
            self._restarted[d.key] = d.restart

    def _onstart(self, d: DesiredContainer) -> list[str] | None:
        return None if d.autossh_entrypoint else onstart(d)

    def _check(self, d: DesiredContainer, c: Observed) -> None:
        if d.key in self._halted:
            # started again after a stop: its exit was no crash
            self._crashes[d.key] = _Crashes(seen={c.finished_at})
            self._started(d)
        elif d.restart and self._restarted.get(d.key) != d.restart:
            self._restart(d, c)
            return
        if c.state == "running":
            self._report_observed(d.key, c, d)
            return
        if c.state in ("restarting", "removing", "paused"):
            self._report_observed(d.key, c, d)
            return
        # created (never started), exited or dead: a crash, or the host rebooted
        crashes = self._crashes.setdefault(d.key, _Crashes())
        now = time.monotonic()
        if c.state != "created" and c.finished_at not in crashes.seen:
            crashes.seen.add(c.finished_at)
            crashes.exits.append(now)
        crashes.exits = [t for t in crashes.exits if now - t < CRASH_WINDOW]
        count = len(crashes.exits)
        delay = 0.0 if count == 0 else min(2.0 ** (count - 1), MAX_RESTART_DELAY)
        state = CRASH_LOOP if count >= CRASH_LOOP_AFTER else RESTARTING
        error = self._exit_error(c, count)
        if count and now < crashes.exits[-1] + delay:
            self._set(self._status(d, state, error=error, observed=c))
            return
        try:
            started = self.runtime.start(c.id, self._onstart(d))
        except RuntimeProblem as exc:
            self._set(self._status(d, state, error=f"{error}; restart failed: {exc}", observed=c))
            return
        if started.state == "running":
            self._report_observed(d.key, started, d)
        else:
            self._set(self._status(d, state, error=error, observed=started))

    def _remove(self, c: Observed) -> None:
        log.info("removing %s (%s)", c.key, c.id[:12])
        try:
            self.runtime.remove(c.id, self.settings.stop_timeout)
        except RuntimeProblem as exc:
            log.warning("could not remove %s: %s", c.id[:12], exc)
            return
        base = c.labels.get(LABEL_BASE)
        if base:  # the committed image it was made from, unless another image stands on it
            self._discard_image(base)

    def _discard_image(self, image: str) -> None:
        try:
            self.runtime.remove_image(image)
        except RuntimeProblem as exc:
            log.debug("image %s kept: %s", image, exc)

    def _fail(self, d: DesiredContainer, error: str) -> None:
        retry = self._retries.setdefault(d.key, _Retry())
        retry.delay = min(max(retry.delay * 2, 5.0), IMAGE_RETRY_MAX)
        retry.next_at = time.monotonic() + retry.delay
        log.warning("%s: %s (retry in %.0fs)", d.key, error, retry.delay)
        self._set(self._status(d, ERROR, error=error))

    def _exit_error(self, c: Observed, count: int) -> str:
        if c.state == "created":
            return c.error or "container was created but not started"
        parts = [f"exited with code {c.exit_code}"]
        if c.oom_killed:
            parts.append("(out of memory)")
        if count >= CRASH_LOOP_AFTER:
            parts.append(f"({count} times in {int(CRASH_WINDOW)}s)")
        text = " ".join(parts)
        if c.error:
            text += f": {c.error}"
        with contextlib.suppress(Exception):
            tail = self.runtime.logs(c.id, 5).strip()
            if tail:
                text += f"; last output: {tail[-500:]}"
        return text

    # ------------------------------------------------------------------ ports and specs

    def _allocate(self, d: DesiredContainer, exclude: set[int]) -> list[PortBinding]:
        """Host ports for ``d``: those its previous container had where they are free (a
        renter's ports survive a reset or a new container), else the next free ones."""
        lo, hi = self.settings.port_range
        used = self.runtime.used_host_ports() | exclude
        for key, status in self.statuses().items():
            if key == d.key:  # its own previous container's: gone by now
                continue
            used.update(status.tcp_ports.values())
            if status.http_host_port:
                used.add(status.http_host_port)
        previous = self._ports.get(d.key, {})
        out: list[PortBinding] = []
        size = hi - lo + 1
        for container_port, kind in sorted(d.ports.items(), key=lambda kv: int(kv[0])):
            s = self.settings
            host_ip = s.bind_address if kind == "tcp" else s.http_bind_address
            port = previous.get(container_port, 0)
            if lo <= port <= hi and port not in used and self._bindable(host_ip, port):
                used.add(port)
                out.append(PortBinding(container_port, port, host_ip, kind))
                continue
            for _ in range(size):
                port = self._port_cursor
                self._port_cursor = lo if port >= hi else port + 1
                if port in used or not self._bindable(host_ip, port):
                    continue
                used.add(port)
                out.append(PortBinding(container_port, port, host_ip, kind))
                break
            else:
                raise LaunchFailed(f"no free host port in {lo}-{hi}")
        return out

    def _bindable(self, host_ip: str, port: int) -> bool:
        if not self.settings.probe_ports:
            return True
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host_ip, port))
            except OSError:
                return False
        return True

    def launch_spec(
        self,
        d: DesiredContainer,
        bindings: list[PortBinding],
        base: str | None = None,
        digest: str | None = None,
    ) -> LaunchSpec:
        """The container ``d`` becomes with these host ports (see :func:`launch.launch_spec`)."""
        return launch_spec(self.settings, d, bindings, base, digest)

    # ------------------------------------------------------------------ statuses

    def _status(
        self,
        d: DesiredContainer,
        state: str,
        *,
        error: str | None = None,
        observed: Observed | None = None,
        host_ports: dict[str, int] | None = None,
    ) -> ContainerStatus:
        tcp: dict[str, int] = {}
        http_host: int | None = None
        http_port = next((p for p, kind in d.ports.items() if kind == "http"), None)
        if observed is not None:
            host_ports = observed.host_ports
        for port, host_port in (host_ports or {}).items():
            if d.ports.get(port) == "http":
                http_host = host_port
            else:
                tcp[port] = host_port
        return ContainerStatus(
            key=d.key,
            kind=d.kind,
            state=state,
            order_id=d.order_id,
            error=error,
            tcp_ports=tcp,
            http_port=http_port,
            http_host_port=http_host,
            container_id=None if observed is None else observed.id,
            gpu_settings_applied=self._gpu_result.get(d.key, (None, None))[0],
            gpu_settings_error=self._gpu_result.get(d.key, (None, None))[1],
            restarted=self._restarted.get(d.key),
            image_digest=None if observed is None else observed.labels.get(LABEL_DIGEST) or None,
        )

    def _report_observed(self, key: str, c: Observed, d: DesiredContainer | None) -> None:
        if d is None:  # adopted before the server spoke: rebuild what we can from labels
            http = c.labels.get(LABEL_HTTP)
            d = DesiredContainer(
                key=key,
                kind=c.labels.get(LABEL_KIND, KIND_ORDER),
                image="",
                order_id=_order_id(c),
                ports={p: "http" if p == http else "tcp" for p in c.host_ports},
            )
        if c.state == "running":
            self._set(self._status(d, RUNNING, error=c.error, observed=c))
        elif c.state in ("restarting", "paused", "removing", "created"):
            self._set(self._status(d, RESTARTING if c.state != "created" else STARTING, observed=c))
        else:
            self._set(self._status(d, RESTARTING, error=self._exit_error(c, 0), observed=c))

    def _set(self, status: ContainerStatus) -> None:
        ports = dict(status.tcp_ports)
        if status.http_port and status.http_host_port:
            ports[status.http_port] = status.http_host_port
        if ports:  # the reconcile thread's alone
            self._ports[status.key] = ports
        with self._lock:
            if status.state == STOPPED:
                self._statuses.pop(status.key, None)
            elif self._statuses.get(status.key) == status:
                return
            else:
                self._statuses[status.key] = status
            self._pending[status.key] = status
        self.on_change()


def _forget(memory: dict[str, Any], wanted: Container[str]) -> None:
    for key in list(memory):
        if key not in wanted:
            del memory[key]


def _generation(c: Observed) -> int:
    """The resets of its order when the container was made (0 before protocol 3)."""
    raw = c.labels.get(LABEL_GENERATION, "")
    return int(raw) if raw.isdigit() else 0


def _best(containers: list[Observed]) -> Observed:
    """Of several containers under one key (should not happen), keep a running one."""
    return sorted(containers, key=lambda c: (c.state != "running", c.started_at))[0]


def _order_id(c: Observed) -> int | None:
    raw = c.labels.get(LABEL_ORDER)
    return int(raw) if raw and raw.isdigit() else None
