"""Network isolation of rentals: iptables rules for the agent's bridge network.

Rentals run on a dedicated bridge network (default ``openclore``) with
inter-container traffic off (``enable_icc=false``). When ``iptables`` is usable (root), the agent
also installs, idempotently, two chains for that bridge:

- ``OC-F-<bridge>``, jumped to from ``DOCKER-USER`` (forwarded traffic): new connections from
  containers to private, link-local, CGNAT, benchmark and multicast ranges (10/8, 172.16/12,
  192.168/16, 169.254/16, 100.64/10, 198.18/15, 224/4, 0/8) are rejected; replies to renters'
  inbound connections and DNS to the host's resolvers are let through; the public internet is
  reachable;
- ``OC-I-<bridge>``, jumped to from ``INPUT``: containers cannot open connections to the host
  itself (any of its addresses: the agent, the host's SSH, a local database…).

The DNS exception (port 53, UDP and TCP) in both chains is for the resolvers the host's Docker
daemon forwards containers' queries to (:func:`host_resolvers`: ``dns`` of
``/etc/docker/daemon.json`` and the nameservers of ``/etc/resolv.conf``, or of systemd-resolved's
upstream file when that one only names a loopback stub), not for port 53 of every private address.
Docker's embedded DNS (127.0.0.11 inside the container) sends those queries from the container's
own network namespace, so they cross the bridge like any other packet.

IPv6 is not enabled on the network, so containers have no IPv6 route at all.

When the agent stops (:meth:`openclore.agent.runtime.docker.DockerRuntime.close`) it removes the
chains and their jumps again, unless rentals still run on the bridge (an agent restarting leaves
its rentals running; the rules stay to protect them until it is back).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from openclore.agent.runtime import RuntimeProblem

PRIVATE_RANGES = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "0.0.0.0/8",
]
DAEMON_JSON = Path("/etc/docker/daemon.json")
RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")


def host_resolvers(
    resolv_conf: Path = RESOLV_CONF,
    systemd_resolv_conf: Path = SYSTEMD_RESOLV_CONF,
    daemon_json: Path = DAEMON_JSON,
) -> list[str]:
    """The IPv4 resolvers containers' DNS queries go to: the daemon's ``dns`` setting and the
    host's nameservers (systemd-resolved's upstream ones when ``/etc/resolv.conf`` only names a
    loopback stub, as Docker does). Loopback addresses are left out (Docker never hands them to
    containers); so are IPv6 ones (the rental network has no IPv6)."""
    found: list[str] = []
    try:
        config = json.loads(daemon_json.read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and isinstance(config.get("dns"), list):
        found.extend(str(x) for x in config["dns"])
    names = _nameservers(resolv_conf)
    if all(_is_loopback(n) for n in names):
        names += _nameservers(systemd_resolv_conf)
    found.extend(names)
    out: list[str] = []
    for text in found:
        try:
            address = ipaddress.ip_address(text.partition("%")[0])
        except ValueError:
            continue
        if address.version == 4 and not address.is_loopback and str(address) not in out:
            out.append(str(address))
    return out


def _nameservers(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            out.append(fields[1])
    return out


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _iptables() -> Callable[..., bool]:
    iptables = shutil.which("iptables")
    if iptables is None:
        raise RuntimeProblem("iptables not found")

    def run(*args: str, check: bool = True) -> bool:
        proc = subprocess.run(
            [iptables, "-w", "5", *args], capture_output=True, text=True, timeout=30
        )
        if check and proc.returncode != 0:
            raise RuntimeProblem(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
        return proc.returncode == 0

    return run


def remove_isolation(bridge: str) -> None:
    """Remove what :func:`apply_isolation` installed for ``bridge``: the jumps, then the chains."""
    run = _iptables()
    fwd, inp = f"OC-F-{bridge}", f"OC-I-{bridge}"
    for hook in ("DOCKER-USER", "FORWARD"):
        while run("-C", hook, "-i", bridge, "-j", fwd, check=False):
            run("-D", hook, "-i", bridge, "-j", fwd)
    while run("-C", "INPUT", "-i", bridge, "-j", inp, check=False):
        run("-D", "INPUT", "-i", bridge, "-j", inp)
    for chain in (fwd, inp):
        if run("-n", "-L", chain, check=False):
            run("-F", chain)
            run("-X", chain)


def apply_isolation(bridge: str, resolvers: Iterable[str] = ()) -> list[str]:
    """Install (or refresh) the iptables chains described in the module docstring; DNS (port 53)
    is let through to ``resolvers`` only."""
    resolvers = list(resolvers)
    run = _iptables()
    fwd, inp = f"OC-F-{bridge}", f"OC-I-{bridge}"
    for chain in (fwd, inp):
        if not run("-n", "-L", chain, check=False):
            run("-N", chain)
        run("-F", chain)
    for chain in (fwd, inp):
        run("-A", chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
        for resolver in resolvers:
            for proto in ("udp", "tcp"):
                run("-A", chain, "-d", resolver, "-p", proto, "--dport", "53", "-j", "RETURN")
    for cidr in PRIVATE_RANGES:
        run("-A", fwd, "-d", cidr, "-j", "REJECT")
    run("-A", fwd, "-j", "RETURN")
    run("-A", inp, "-j", "REJECT")
    hook = "DOCKER-USER" if run("-n", "-L", "DOCKER-USER", check=False) else "FORWARD"
    if not run("-C", hook, "-i", bridge, "-j", fwd, check=False):
        run("-I", hook, "1", "-i", bridge, "-j", fwd)
    if not run("-C", "INPUT", "-i", bridge, "-j", inp, check=False):
        run("-I", "INPUT", "1", "-i", bridge, "-j", inp)
    return [
        f"iptables: {bridge} → private/link-local/CGNAT ranges rejected ({hook}), "
        f"{bridge} → host rejected (INPUT); replies allowed; DNS allowed to "
        f"{', '.join(resolvers) or 'no private resolver'}"
    ]
