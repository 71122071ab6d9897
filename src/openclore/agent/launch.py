"""What a desired container becomes on the engine: the reconciler's settings, the onstart
script and entrypoint conventions, and the :class:`LaunchSpec` (see
:mod:`openclore.agent.reconcile` for the conventions)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from openclore.agent import share
from openclore.agent.runtime import (
    LABEL_AGENT,
    LABEL_BASE,
    LABEL_DIGEST,
    LABEL_GENERATION,
    LABEL_HTTP,
    LABEL_KEY,
    LABEL_KIND,
    LABEL_ORDER,
    LABEL_SPEC,
    LaunchSpec,
    PortBinding,
)
from openclore.protocol import DesiredContainer

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


def launch_spec(
    s: ReconcileSettings,
    d: DesiredContainer,
    bindings: list[PortBinding],
    base: str | None = None,
    digest: str | None = None,
) -> LaunchSpec:
    """The container ``d`` becomes with these host ports (its labels, env, GPUs, limits, disk
    and volumes), created from ``base`` (a committed image carrying the renter's files) when
    given, else from the order's image, whose ``digest`` it is labelled with (a container made
    from ``base`` inherits the label of the container that was committed)."""
    labels = {
        **s.extra_labels,
        LABEL_AGENT: s.agent_id,
        LABEL_KEY: d.key,
        LABEL_KIND: d.kind,
        LABEL_SPEC: d.spec_hash(),
        LABEL_GENERATION: str(d.generation),
    }
    if d.order_id is not None:
        labels[LABEL_ORDER] = str(d.order_id)
    http = [port for port, kind in d.ports.items() if kind == "http"]
    if http:
        labels[LABEL_HTTP] = http[0]
    if digest and base is None:
        labels[LABEL_DIGEST] = digest
    if base is not None:
        # the committed image has the old container's labels: ours override them
        labels[LABEL_BASE] = base
        labels.setdefault(LABEL_HTTP, "")
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
    elif base is not None and s.gpus:
        # not the GPUs the old container had (its env is part of the committed image)
        env.setdefault("NVIDIA_VISIBLE_DEVICES", "all")
    if d.share is not None:
        cpus, memory = share.scaled_cpus(s.cpus, d.share), share.scaled(s.memory, d.share)
        if d.gpus:
            host = s.host_cpus or share.host_cpus(s.cpus)
            pinned = share.cpuset(share.cpus_for_slots(d.gpus, d.share[1], host))
    suffix = s.agent_id[:8]
    return LaunchSpec(
        name=f"openclore-{d.key}-{suffix}",
        image=d.image if base is None else base,
        env=env,
        labels=labels,
        ports=bindings,
        entrypoint=entrypoint,
        command=command,
        onstart=None if d.autossh_entrypoint else onstart(d),
        gpus=s.gpus,
        gpu_ids=None if d.gpus is None else list(d.gpus),
        cpuset_cpus=pinned,
        disk_share=d.share,
        disk_gb=d.disk_gb,
        mounts=dict(d.mounts),
        cpus=cpus,
        memory=memory,
        shm_size=s.shm_size,
    )


def onstart_script(command: str) -> str:
    """Clore's onstart script: the order's command, with a shebang when it has none."""
    script = command if command.startswith("#!") else "#!/bin/sh\n" + command
    return script if script.endswith("\n") else script + "\n"


def onstart(d: DesiredContainer) -> list[str] | None:
    """What the runtime executes in the container after each start (for plain images)."""
    if not d.command:
        return None
    return ["/bin/sh", "-c", RUN_ONSTART, "onstart", onstart_script(d.command)]


def keep_image(key: str, generation: int, agent_id: str) -> str:
    """The local image a container's files are committed into to carry them into a new container
    (``openclore-keep/<key>:g<generation>-<agent>``): one per key and reset, so that a reset never
    finds the files of before it."""
    name = re.sub(r"[^a-z0-9._-]+", "-", key.lower()).strip(".-_") or "container"
    agent = re.sub(r"[^A-Za-z0-9_.-]+", "-", agent_id[:8]).strip(".-") or "agent"
    return f"openclore-keep/{name}:g{generation}-{agent}"
