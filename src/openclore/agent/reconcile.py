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
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from openclore.agent import share
from openclore.agent.gpu import GpuTuner
from openclore.agent.runtime import (
    LABEL_AGENT,
    LABEL_HTTP,
    LABEL_KEY,
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
from openclore.protocol import (
    CRASH_LOOP,
    ERROR,
    KIND_ORDER,
    PULLING,
    RESTARTING,
    RUNNING,
    STARTING,
    STOPPED,
    ContainerStatus,
    DesiredContainer,
)

log = logging.getLogger("openclore.agent.reconcile")

ONSTART_PATH = "/root/onstart.sh"
# The script travels as an argument ($1) of the exec or of the entrypoint, not as a file copied
# into the container beforehand: copying (put_archive) costs a mount of the container's
# filesystem, about 50 ms of every start.
RUN_ONSTART = (
    "mkdir -p /root /var/log 2>/dev/null; "
    f'printf "%s" "$1" > {ONSTART_PATH} && chmod 755 {ONSTART_PATH}; '
    "cd /root 2>/dev/null || cd /; "
    f"exec {ONSTART_PATH} >>/var/log/onstart.log 2>&1"
)
AUTOSSH_ENTRYPOINT = r"""# openclore autossh entrypoint: sshd, then /root/onstart.sh
mkdir -p /var/log /root/.ssh /run/sshd /var/run/sshd 2>/dev/null
if [ -n "$1" ]; then
  printf '%s' "$1" >/root/onstart.sh && chmod 755 /root/onstart.sh
fi
chmod 700 /root/.ssh 2>/dev/null
if [ -n "$SSH_KEY" ]; then
  printf '%s\n' "$SSH_KEY" >>/root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
if [ -n "$SSH_PASSWORD" ]; then
  echo "root:$SSH_PASSWORD" | chpasswd 2>/dev/null || true
fi
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  {
    if command -v apt-get >/dev/null 2>&1; then
      apt-get update && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends openssh-server
    elif command -v apk >/dev/null 2>&1; then
      apk add --no-cache openssh
    elif command -v dnf >/dev/null 2>&1; then
      dnf install -y openssh-server
    fi
  } >>/var/log/openclore-ssh.log 2>&1
fi
SSHD=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
if [ -x "$SSHD" ]; then
  ssh-keygen -A >/dev/null 2>&1
  if [ -n "$SSH_PASSWORD" ]; then PW=yes; else PW=no; fi
  "$SSHD" -o PermitRootLogin=yes -o PasswordAuthentication=$PW >>/var/log/openclore-ssh.log 2>&1
fi
if [ -f /root/onstart.sh ]; then
  (cd /root && /root/onstart.sh >>/var/log/onstart.log 2>&1 &)
fi
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""

PARTIAL_GPU_SETTINGS = "GPU settings are applied to whole-server rentals only"
CRASH_WINDOW = 600.0  # seconds over which exits count towards a crash loop
CRASH_LOOP_AFTER = 3  # exits within the window
MAX_RESTART_DELAY = 60.0
IMAGE_RETRY_MAX = 300.0


@dataclass
class ReconcileSettings:
    agent_id: str
    port_range: tuple[int, int] = (40000, 40999)
    bind_address: str = "0.0.0.0"  # where renters' tcp ports are published
    http_bind_address: str = "127.0.0.1"  # http ports: for the host's HTTP proxy only
    gpus: bool = False
    cpus: float | None = None
    # the CPUs per-GPU rentals are pinned within (None: the machine's, see agent.share.host_cpus)
    host_cpus: list[int] | None = None
    memory: int | None = None
    shm_size: int | None = None
    stop_timeout: float = 5.0
    poll_interval: float = 1.0
    probe_ports: bool = True  # check a host port is free with a bind() before using it
    extra_labels: dict[str, str] = field(default_factory=dict)


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
        self._statuses: dict[str, ContainerStatus] = {}
        self._pending: dict[str, ContainerStatus] = {}
        self._retries: dict[str, _Retry] = {}
        self._crashes: dict[str, _Crashes] = {}
        self._port_cursor = settings.port_range[0]
        self._thread: threading.Thread | None = None
        self.passes = 0

    # ------------------------------------------------------------------ interface

    def set_desired(self, containers: list[DesiredContainer]) -> None:
        with self._lock:
            self._desired = list(containers)
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
        observed = self.runtime.containers()
        by_key: dict[str, list[Observed]] = {}
        for c in observed:
            by_key.setdefault(c.key, []).append(c)
        if desired is None:
            # not yet told what to run: adopt and report, change nothing
            for key, containers in by_key.items():
                self._report_observed(key, _best(containers), None)
            return
        wanted = {d.key: d for d in desired}
        for key, containers in by_key.items():
            d = wanted.get(key)
            keep = _best(containers) if d is not None else None
            for c in containers:
                if c is keep and c.labels.get(LABEL_SPEC) == d.spec_hash():  # type: ignore[union-attr]
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
                if c is keep:
                    keep = None
            by_key[key] = [keep] if keep is not None else []
        for d in desired:
            current = by_key.get(d.key) or []
            if self._stop.is_set():
                return
            if not current:
                self._launch(d)
            else:
                self._check(d, current[0])
        self._tune_gpus(desired)
        # forget what is neither wanted nor present (its STOPPED status has been queued)
        with self._lock:
            for key in list(self._statuses):
                if key not in wanted:
                    del self._statuses[key]
            for key in list(self._retries):
                if key not in wanted:
                    del self._retries[key]
            for key in list(self._crashes):
                if key not in wanted:
                    del self._crashes[key]
            for key in list(self._gpu_result):
                if key not in wanted:
                    del self._gpu_result[key]

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
        try:
            if not self.runtime.has_image(d.image):
                self._set(self._status(d, PULLING))
                self.runtime.pull(d.image, auth=d.registry_auth)
            self._set(self._status(d, STARTING))
            exclude: set[int] = set()
            for _attempt in range(5):
                bindings = self._allocate(d, exclude)
                try:
                    observed = self.runtime.launch(self.launch_spec(d, bindings))
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
        log.info("started %s (%s) from %s", d.key, observed.id[:12], d.image)
        self._report_observed(d.key, observed, d)

    def _check(self, d: DesiredContainer, c: Observed) -> None:
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
            started = self.runtime.start(c.id, None if d.autossh_entrypoint else _onstart(d))
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
        lo, hi = self.settings.port_range
        used = self.runtime.used_host_ports() | exclude
        for status in self.statuses().values():
            used.update(status.tcp_ports.values())
            if status.http_host_port:
                used.add(status.http_host_port)
        out: list[PortBinding] = []
        size = hi - lo + 1
        for container_port, kind in sorted(d.ports.items(), key=lambda kv: int(kv[0])):
            s = self.settings
            host_ip = s.bind_address if kind == "tcp" else s.http_bind_address
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

    def launch_spec(self, d: DesiredContainer, bindings: list[PortBinding]) -> LaunchSpec:
        """The container ``d`` becomes with these host ports (its labels, env, GPUs, limits)."""
        s = self.settings
        labels = {
            **s.extra_labels,
            LABEL_AGENT: s.agent_id,
            LABEL_KEY: d.key,
            LABEL_KIND: d.kind,
            LABEL_SPEC: d.spec_hash(),
        }
        if d.order_id is not None:
            labels[LABEL_ORDER] = str(d.order_id)
        http = [port for port, kind in d.ports.items() if kind == "http"]
        if http:
            labels[LABEL_HTTP] = http[0]
        env = dict(d.env)
        if d.jupyter_token:
            env.setdefault("JUPYTER_TOKEN", d.jupyter_token)
        if d.ssh_password:
            env.setdefault("SSH_PASSWORD", d.ssh_password)
            env.setdefault("ROOT_PASSWORD", d.ssh_password)
        if d.ssh_key:
            env.setdefault("SSH_KEY", d.ssh_key)
            env.setdefault("PUBLIC_KEY", d.ssh_key)
        if d.order_id is not None:
            env.setdefault("OPENCLORE_ORDER_ID", str(d.order_id))
        tcp = [f"{b.container_port}:{b.host_port}" for b in bindings if b.kind == "tcp"]
        if tcp:
            env.setdefault("OPENCLORE_TCP_PORTS", ",".join(tcp))
        entrypoint: list[str] | None = None
        command: list[str] | None = None
        if d.autossh_entrypoint:
            script = onstart_script(d.command) if d.command else ""
            entrypoint = ["/bin/sh", "-c", AUTOSSH_ENTRYPOINT, "openclore-entrypoint", script]
            command = []
        cpus, memory, pinned = s.cpus, s.memory, None
        if d.gpus is not None:
            # exactly its GPUs, whatever the renter's env or the image says
            env["NVIDIA_VISIBLE_DEVICES"] = share.visible_devices(d.gpus)
        if d.share is not None:
            cpus, memory = share.scaled_cpus(s.cpus, d.share), share.scaled(s.memory, d.share)
            if d.gpus:
                host = s.host_cpus or share.host_cpus(s.cpus)
                pinned = share.cpuset(share.cpus_for_slots(d.gpus, d.share[1], host))
        suffix = s.agent_id[:8]
        return LaunchSpec(
            name=f"openclore-{d.key}-{suffix}",
            image=d.image,
            env=env,
            labels=labels,
            ports=bindings,
            entrypoint=entrypoint,
            command=command,
            onstart=None if d.autossh_entrypoint else _onstart(d),
            gpus=s.gpus,
            gpu_ids=None if d.gpus is None else list(d.gpus),
            cpuset_cpus=pinned,
            disk_share=d.share,
            cpus=cpus,
            memory=memory,
            shm_size=s.shm_size,
        )

    # ------------------------------------------------------------------ statuses

    def _status(
        self,
        d: DesiredContainer,
        state: str,
        *,
        error: str | None = None,
        observed: Observed | None = None,
    ) -> ContainerStatus:
        tcp: dict[str, int] = {}
        http_host: int | None = None
        http_port = next((p for p, kind in d.ports.items() if kind == "http"), None)
        if observed is not None:
            for port, host_port in observed.host_ports.items():
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
        with self._lock:
            if status.state == STOPPED:
                self._statuses.pop(status.key, None)
            elif self._statuses.get(status.key) == status:
                return
            else:
                self._statuses[status.key] = status
            self._pending[status.key] = status
        self.on_change()


def _best(containers: list[Observed]) -> Observed:
    """Of several containers under one key (should not happen), keep a running one."""
    return sorted(containers, key=lambda c: (c.state != "running", c.started_at))[0]


def _order_id(c: Observed) -> int | None:
    raw = c.labels.get(LABEL_ORDER)
    return int(raw) if raw and raw.isdigit() else None


def onstart_script(command: str) -> str:
    """Clore's onstart script: the order's command, with a shebang when it has none."""
    script = command if command.startswith("#!") else "#!/bin/sh\n" + command
    return script if script.endswith("\n") else script + "\n"


def _onstart(d: DesiredContainer) -> list[str] | None:
    """What the runtime executes in the container after each start (for plain images)."""
    if not d.command:
        return None
    return ["/bin/sh", "-c", RUN_ONSTART, "onstart", onstart_script(d.command)]
