"""A renter adds an SSH key to the account once and logs in to every new rental through the
access gateway with that key alone: a real market, gateway, Docker agent (rentals hardened as
always) and a real OpenSSH server in the rental's container.

Docker Hub is out of reach, so the image with sshd is made here, once per test session (kept
between sessions, rebuilt when its recipe changes): ``docker import`` of a rootfs of
busybox-static, the host's ``/usr/sbin/sshd`` and ``ssh-keygen`` with the shared libraries
``ldd`` lists, ``/etc/passwd`` with root and sshd's privilege separation user ``sshd``, and an
``sshd_config`` without PAM. Its host keys are made by the agent's autossh entrypoint
(``ssh-keygen -A``), which also puts the order's keys into root's ``authorized_keys`` and starts
sshd. Needs the Debian package openssh-server on the host (``.ci/run`` installs it): mandatory
when ``CI=true``, skipped with a message elsewhere.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from openclore.domain.usd import rate_units
from openclore.market.rates import set_rates
from openclore.market.read_models import ssh_line
from test_agent_docker import containers, docker_client, docker_run
from test_gateway import gateway, tunnel_agent, wait_banner

from agent_support import GatewayThread, host_server, wait_for, wait_order_state
from support import IN_CI, Market, ok, order_body

__all__ = ["docker_client", "docker_run", "gateway"]  # fixtures

SSHD_IMAGE = "openclore-test/sshd:latest"
IMAGE_LABEL = "openclore.test-image"
# bump when the recipe below changes: an older local image is made again
RECIPE = "sshd-1"
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
SSHD_CONFIG = b"""# openclore test image: keys only, no PAM (none in the image)
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PidFile /run/sshd.pid
"""
IDLE = b'#!/bin/sh\ntrap "exit 0" TERM INT\nwhile :; do sleep 3600 & wait $!; done\n'


def _libraries(binary: str) -> set[str]:
    """The shared libraries ``binary`` loads (the dynamic loader included), as ``ldd`` says."""
    listed = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return {m.group(1) for m in re.finditer(r"(/\S+) \(0x[0-9a-f]+\)", listed)}


def sshd_rootfs() -> bytes:
    """A tarball of the image's root file system."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    now = int(time.time())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, now
            data = kw.get("data")
            if data is not None:
                info.size = len(data)
            info.linkname = kw.get("link", "")
            tar.addfile(info, None if data is None else io.BytesIO(data))

        def copy(path: str, mode: int = 0o755) -> None:
            add(path.lstrip("/"), mode=mode, data=Path(path).resolve().read_bytes())

        folders = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "etc/ssh", "lib", "lib64"]
        folders += ["run", "run/sshd", "var", "var/log", "var/run", "proc", "sys", "dev"]
        for folder in folders:
            add(folder, tarfile.DIRTYPE, 0o755)
        add("root", tarfile.DIRTYPE, 0o700)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", mode=0o755, data=Path(busybox).resolve().read_bytes())
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        copy(SSHD)
        copy(SSH_KEYGEN)
        libraries = _libraries(SSHD) | _libraries(SSH_KEYGEN)
        parents = {str(Path(lib).parent).lstrip("/") for lib in libraries}
        for parent in sorted(parents - set(folders)):
            for part in reversed(Path(parent).parents[:-1]):
                if str(part) not in folders:
                    folders.append(str(part))
                    add(str(part), tarfile.DIRTYPE, 0o755)
            folders.append(parent)
            add(parent, tarfile.DIRTYPE, 0o755)
        for lib in sorted(libraries):
            copy(lib)
        passwd = (
            b"root:x:0:0:root:/root:/bin/sh\n"
            b"sshd:x:100:65534:privilege separation:/run/sshd:/bin/false\n"
            b"nobody:x:65534:65534:nobody:/:/bin/false\n"
        )
        add("etc/passwd", data=passwd)
        add("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
        add("etc/ssh/sshd_config", data=SSHD_CONFIG)
        add("bin/idle", mode=0o755, data=IDLE)
    return buf.getvalue()


@pytest.fixture(scope="session")
def sshd_image(docker_client: Any) -> str:
    """The image's id; made when missing or made by an older recipe."""
    missing = [p for p in (SSHD, SSH_KEYGEN) if not os.access(p, os.X_OK)]
    if missing or shutil.which("ldd") is None:
        what = " or ".join(missing) or "ldd"
        message = f"no {what} on this machine: apt-get install openssh-server"
        if IN_CI:
            pytest.fail(message + " (CI=true: the gateway SSH test is mandatory)")
        pytest.skip(message)
    try:
        found = docker_client.images.get(SSHD_IMAGE)
        if (found.labels or {}).get(IMAGE_LABEL) == RECIPE:
            return str(found.id)
    except Exception:  # not there yet
        pass
    repository, _, tag = SSHD_IMAGE.rpartition(":")
    changes = [
        "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["/bin/idle"]',
        f"LABEL {IMAGE_LABEL}={RECIPE}",
    ]
    docker_client.api.import_image_from_data(
        sshd_rootfs(), repository=repository, tag=tag, changes=changes
    )
    return str(docker_client.images.get(SSHD_IMAGE).id)


async def _run_as_root(host: str, port: int, key: asyncssh.SSHKey, command: str) -> str:
    async with asyncssh.connect(
        host,
        port,
        username="root",
        client_keys=[key],
        known_hosts=None,  # a new rental's host key is new: nothing to check it against
        agent_path=None,
        password=None,
        preferred_auth=["publickey"],
        connect_timeout=10,
    ) as conn:
        result = await conn.run(command, check=True, timeout=10)
        return str(result.stdout)


def run_as_root(line: str, key: asyncssh.SSHKey, command: str) -> str:
    """Run ``command`` over SSH as the console's SSH line says (``ssh root@HOST -p PORT``)."""
    found = re.fullmatch(r"ssh root@(\S+) -p (\d+)", line)
    assert found is not None, line
    return asyncio.run(_run_as_root(found.group(1), int(found.group(2)), key, command))


def test_an_account_key_logs_in_to_every_new_rental_through_the_gateway(
    market: Market,
    gateway: GatewayThread,
    tmp_path: Path,
    docker_client: Any,
    docker_run: dict[str, str],
    sshd_image: str,
) -> None:
    renter = market.client(market.user(bitcoin="0.01"))
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode().strip()
    added = ok(renter.post("/v1/add_ssh_key", json={"name": "laptop", "public_key": public}))
    assert added["key"]["type"] == "ssh-ed25519"

    sid, token = host_server(market, market.user())
    agent = tunnel_agent(market, tmp_path, docker_run, token)
    tunnel = agent.agent.tunnel
    assert tunnel is not None
    try:
        wait_for(tunnel.connected.is_set, 10, what="tunnel up")
        lo, hi = market.settings.gateway_ports
        for rental in ("first", "second"):
            # neither an ssh_key nor an ssh_password in the order: the account's key only
            body = order_body(
                sid, image=SSHD_IMAGE, ports={"22": "tcp"}, autossh_entrypoint=True, env={}
            )
            assert "ssh_key" not in body and "ssh_password" not in body
            oid = ok(renter.post("/v1/create_order", json=body))["order_id"]
            order = wait_order_state(renter, oid, "running", timeout=30)
            line = ssh_line(order)
            assert line is not None, order
            port = int(line.rsplit(" ", 1)[1])
            assert lo <= port <= hi, f"{line}: not the gateway's"
            assert wait_banner(port, 30).startswith(b"SSH-2.0-OpenSSH"), rental

            assert run_as_root(line, key, "id -u; echo ok").split() == ["0", "ok"], rental
            with pytest.raises(asyncssh.PermissionDenied):
                run_as_root(line, other, "echo ok")

            # sshd ran in a container hardened as every rental is
            (container,) = containers(docker_client, docker_run, f"order-{oid}")
            host_config = container.attrs["HostConfig"]
            assert "no-new-privileges" in host_config["SecurityOpt"]
            assert {"NET_RAW", "MKNOD", "SETFCAP"} <= set(host_config["CapDrop"])
            assert host_config["PidsLimit"] and host_config["IpcMode"] == "private"
            # and the order records the image it ran: imported here, so its id
            assert order["image_digest"] == sshd_image

            ok(renter.post("/v1/cancel_order", json={"id": oid}))
            wait_order_state(renter, oid, "stopped", timeout=20)
            wait_for(
                lambda oid=oid: not containers(docker_client, docker_run, f"order-{oid}"),
                15,
                what="the rental's container removed",
            )
    finally:
        agent.stop()


def vastai_cli() -> list[str] | None:
    """The released ``vastai`` CLI (its own environment, ``.vastai-venv``, made by scripts/test),
    or None where it is not installed."""
    root = Path(__file__).resolve().parents[2]
    for candidate in (os.environ.get("OPENCLORE_VASTAI_PYTHON"), root / ".vastai-venv/bin/python"):
        if candidate and Path(candidate).exists():
            return [str(candidate), "-c", "from vastai.cli.main import main; main()"]
    return None


def test_a_vastai_instance_is_reached_over_ssh_through_the_gateway(
    market: Market,
    gateway: GatewayThread,
    tmp_path: Path,
    docker_client: Any,
    docker_run: dict[str, str],
    sshd_image: str,
) -> None:
    """``vastai create instance`` (Vast's API: the account's key, the ssh runtype) gets a
    container that ``vastai ssh-url`` leads to, through the gateway, as root with the key alone."""
    cli = vastai_cli()
    if cli is None:
        message = "vastai is not installed (./scripts/test makes .vastai-venv)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    token = market.user(bitcoin="0.01")
    key = asyncssh.generate_private_key("ssh-ed25519")
    api = httpx.Client(base_url=market.url, headers={"Authorization": f"Bearer {token}"})
    market.clients.append(api)
    public = key.export_public_key().decode().strip()
    assert api.post("/api/v0/ssh/", json={"ssh_key": public}).status_code == 200
    sid, agent_token = host_server(market, market.user())
    with market.db.write() as conn:
        set_rates(conn, {"bitcoin": rate_units("60000")}, market.settings, market.now())
    agent = tunnel_agent(market, tmp_path, docker_run, agent_token)
    tunnel = agent.agent.tunnel
    assert tunnel is not None
    try:
        wait_for(tunnel.connected.is_set, 10, what="tunnel up")
        offers: list[dict[str, Any]] = []
        wait_for(
            lambda: offers.extend(api.post("/api/v0/bundles/", json={}).json()["offers"]) or offers,
            15,
            interval=0.2,
            what="the agent's server offered",
        )
        (offer,) = offers
        assert offer["machine_id"] == sid
        made = api.put(
            f"/api/v0/asks/{offer['id']}/",
            json={"image": SSHD_IMAGE, "runtype": "ssh_direc ssh_proxy", "price": None},
        )
        assert made.status_code == 200, made.text
        iid = made.json()["new_contract"]
        wait_for(
            lambda: (
                api.get(f"/api/v0/instances/{iid}/").json()["instances"]["actual_status"]
                == "running"
            ),
            30,
            0.2,
            what="instance running",
        )
        env = {**os.environ, "HOME": str(tmp_path), "VASTAI_NO_UPDATE_CHECK": "1"}
        done = subprocess.run(
            [*cli, "--url", market.url, "--api-key", token, "ssh-url", str(iid)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        found = re.fullmatch(r"ssh://root@(\S+):(\d+)", done.stdout.strip())
        assert found is not None, done.stdout
        lo, hi = market.settings.gateway_ports
        port = int(found.group(2))
        assert lo <= port <= hi, f"{done.stdout}: not the gateway's"
        assert wait_banner(port, 30).startswith(b"SSH-2.0-OpenSSH")
        line = f"ssh root@{found.group(1)} -p {port}"
        assert run_as_root(line, key, "id -u; echo ok").split() == ["0", "ok"]
        assert api.delete(f"/api/v0/instances/{iid}/").json() == {"success": True}
        wait_for(
            lambda: not containers(docker_client, docker_run, f"order-{iid}"),
            15,
            what="the instance's container removed",
        )
    finally:
        agent.stop()
