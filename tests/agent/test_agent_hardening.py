"""The agent's hardening, without Docker: image references, the registry policy, the resolvers the
firewall lets DNS through to, and the container options. (The same things on real containers:
tests/agent/test_agent_docker.py.)"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from openclore.agent.images import (
    InvalidReference,
    RegistryPolicy,
    RegistryRefused,
    address_problem,
    parse_reference,
    resolve,
    split_host_port,
)
from openclore.agent.runtime.docker import (
    DEFAULT_CAP_DROP,
    Hardening,
    host_resolvers,
    normalize_capability,
)
from openclore.agent.settings import format_size, split_list

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "registry", "host", "port", "path", "tag", "digest", "explicit"),
    [
        ("ubuntu", "docker.io", "docker.io", None, "library/ubuntu", None, None, False),
        ("ubuntu:22.04", "docker.io", "docker.io", None, "library/ubuntu", "22.04", None, False),
        ("foo/bar", "docker.io", "docker.io", None, "foo/bar", None, None, False),
        (
            "nvidia/cuda:12.4.1-base-ubuntu22.04",
            "docker.io",
            "docker.io",
            None,
            "nvidia/cuda",
            "12.4.1-base-ubuntu22.04",
            None,
            False,
        ),
        ("myhost:5000", "docker.io", "docker.io", None, "library/myhost", "5000", None, False),
        (
            "index.docker.io/library/ubuntu",
            "docker.io",
            "index.docker.io",
            None,
            "library/ubuntu",
            None,
            None,
            True,
        ),
        ("docker.io/ubuntu", "docker.io", "docker.io", None, "library/ubuntu", None, None, True),
        ("ghcr.io/org/img:v1", "ghcr.io", "ghcr.io", None, "org/img", "v1", None, True),
        ("localhost/foo", "localhost", "localhost", None, "foo", None, None, True),
        ("localhost:5000/a/b:1", "localhost:5000", "localhost", 5000, "a/b", "1", None, True),
        ("Registry/foo", "Registry", "registry", None, "foo", None, None, True),
        (
            "127.0.0.1:18432/probe:latest",
            "127.0.0.1:18432",
            "127.0.0.1",
            18432,
            "probe",
            "latest",
            None,
            True,
        ),
        ("10.0.0.5/team/img", "10.0.0.5", "10.0.0.5", None, "team/img", None, None, True),
        ("[::1]:5000/probe", "[::1]:5000", "::1", 5000, "probe", None, None, True),
        (f"[fd00::1]/x@{DIGEST}", "[fd00::1]", "fd00::1", None, "x", None, DIGEST, True),
        (
            f"reg.example.com/a/b:t@{DIGEST}",
            "reg.example.com",
            "reg.example.com",
            None,
            "a/b",
            "t",
            DIGEST,
            True,
        ),
        (f"ubuntu@{DIGEST}", "docker.io", "docker.io", None, "library/ubuntu", None, DIGEST, False),
        ("a-b_c__d/f--g.h", "docker.io", "docker.io", None, "a-b_c__d/f--g.h", None, None, False),
    ],
)
def test_image_references_are_parsed_like_the_daemon_does(
    image: str,
    registry: str,
    host: str,
    port: int | None,
    path: str,
    tag: str | None,
    digest: str | None,
    explicit: bool,
) -> None:
    ref = parse_reference(image)
    assert (ref.registry, ref.host, ref.port, ref.path, ref.tag, ref.digest) == (
        registry,
        host,
        port,
        path,
        tag,
        digest,
    )
    assert ref.explicit_registry is explicit
    assert ref.pull_tag == (digest or tag or "latest")
    assert image.startswith(ref.name)


@pytest.mark.parametrize(
    "image",
    [
        "",
        " ubuntu",
        "ubuntu ",
        "Ubuntu",
        "a//b",
        "/ubuntu",
        "ubuntu/",
        "127.0.0.1:18432/Probe",
        "http://127.0.0.1:18432/probe",
        "127.0.0.1:port/probe",
        "[::1/probe",
        "[::1]x/probe",
        "ubuntu:",
        "ubuntu:bad tag",
        "ubuntu:-dash",
        "ubuntu@sha256:abc",
        "ubuntu@" + DIGEST + "x",
        "ab" * 32,
        "a" * 256,
        "ubuntu:" + "t" * 129,
        "bad_-_/x",
        "reg.example.com/ü",
        "-reg.example.com/x",
    ],
)
def test_invalid_references_are_refused(image: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(image)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.255", "CGNAT"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),  # 240/4 is in Python's private list (reserved, too)
        ("255.255.255.255", "private"),
        ("198.18.0.1", "private"),
        ("192.0.2.1", "private"),  # documentation
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("100.63.255.255", None),
        ("100.128.0.0", None),
        ("172.15.255.255", None),
        ("172.32.0.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_addresses_the_daemon_may_not_be_sent_to(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registry.lan", ("registry.lan", None)),
        ("Registry.LAN:5000", ("registry.lan", 5000)),
        ("10.0.0.5:5000", ("10.0.0.5", 5000)),
        ("[fd00::1]:5000", ("fd00::1", 5000)),
        ("[fd00::1]", ("fd00::1", None)),
        ("fd00::1", ("fd00::1", None)),
    ],
)
def test_allowed_registry_entries(text: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:x", "host:0", "host:70000", "[::1", "[::1]x"])
def test_bad_allowed_registry_entries(text: str) -> None:
    with pytest.raises(InvalidReference):
        split_host_port(text)


class FakeDNS:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, host: str, port: int | None) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"{host} does not resolve")
        return self.answers[host]


DNS = {
    "public.example": ["203.0.114.7", "2606:4700::1"],
    "internal.example": ["10.0.0.7"],
    "mixed.example": ["8.8.8.8", "192.168.0.9"],
    "rebind.example": ["8.8.4.4", "::ffff:127.0.0.1"],
    "empty.example": [],
    "registry.lan": ["10.0.0.5"],
}


@pytest.mark.parametrize(
    ("image", "allowed", "refusal", "asked"),
    [
        ("ubuntu:22.04", [], None, []),
        ("docker.io/library/ubuntu", [], None, []),
        ("index.docker.io/library/ubuntu", [], None, []),
        ("8.8.8.8:5000/x", [], None, []),
        ("[2606:4700::1]:5000/x", [], None, []),
        ("public.example/x:1", [], None, ["public.example"]),
        ("127.0.0.1:18432/probe:latest", [], "127.0.0.1:18432 is not allowed", []),
        ("[::1]:18432/probe", [], "[::1]:18432 is not allowed", []),
        ("169.254.169.254/latest", [], "169.254.169.254 is not allowed", []),
        ("100.64.1.1:443/x", [], "100.64.1.1:443 is not allowed", []),
        ("0.0.0.0:80/x", [], "0.0.0.0:80 is not allowed", []),
        ("internal.example/x", [], "internal.example is not allowed", ["internal.example"]),
        ("mixed.example/x", [], "mixed.example is not allowed", ["mixed.example"]),
        ("rebind.example/x", [], "rebind.example is not allowed", ["rebind.example"]),
        ("nowhere.example/x", [], "nowhere.example cannot be resolved", ["nowhere.example"]),
        ("empty.example/x", [], "empty.example cannot be resolved", ["empty.example"]),
        ("docker.io:5000/x", [], "docker.io:5000 cannot be resolved", ["docker.io"]),
        # the host's own registries
        ("registry.lan:5000/team/x", ["registry.lan"], None, []),
        ("registry.lan:5000/team/x", ["REGISTRY.lan:5000"], None, []),
        ("registry.lan:5001/team/x", ["registry.lan:5000"], "not allowed", ["registry.lan"]),
        ("10.0.0.5:5000/x", ["10.0.0.5:5000"], None, []),
        ("10.0.0.5:5001/x", ["10.0.0.5:5000"], "10.0.0.5:5001 is not allowed", []),
        ("127.0.0.1:5000/x", ["127.0.0.1"], None, []),
        ("[fd00::1]:5000/x", ["[fd00::1]:5000"], None, []),
        ("[fd00::1]:5000/x", ["fd00::1"], None, []),
        ("localhost:5000/x", ["127.0.0.1"], "cannot be resolved", ["localhost"]),  # by name
    ],
)
def test_the_registry_policy(
    image: str, allowed: list[str], refusal: str | None, asked: list[str]
) -> None:
    dns = FakeDNS(DNS)
    policy = RegistryPolicy(allowed, resolver=dns)
    ref = parse_reference(image)
    if refusal is None:
        policy.check(ref)
    else:
        with pytest.raises(RegistryRefused) as info:
            policy.check(ref)
        assert str(info.value).startswith("registry ")
        assert refusal in str(info.value)
        assert info.value.detail  # what the host's log gets
    assert dns.asked == asked


def test_names_resolving_to_loopback_are_refused_with_the_real_resolver() -> None:
    """``localhost`` resolves through /etc/hosts: no DNS server needed."""
    assert "127.0.0.1" in resolve("localhost", 5000) or "::1" in resolve("localhost", 5000)
    with pytest.raises(RegistryRefused, match="localhost:5000 is not allowed") as info:
        RegistryPolicy().check(parse_reference("localhost:5000/probe:latest"))
    assert "loopback" in info.value.detail
    RegistryPolicy(["localhost:5000"]).check(parse_reference("localhost:5000/probe:latest"))
    with pytest.raises(OSError):
        resolve("does-not-exist.invalid", None, timeout=5)


def test_host_resolvers(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    systemd = tmp_path / "systemd-resolv.conf"
    daemon = tmp_path / "daemon.json"
    resolv.write_text(
        "# generated\nsearch example.net\nnameserver 10.255.255.53\nnameserver ::1\n"
        "nameserver 127.0.0.53\nnameserver 2001:db8::53\nnameserver 1.1.1.1\noptions ndots:0\n"
    )
    systemd.write_text("nameserver 192.168.1.1\n")
    assert host_resolvers(resolv, systemd, daemon) == ["10.255.255.53", "1.1.1.1"]

    resolv.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")  # systemd-resolved stub
    assert host_resolvers(resolv, systemd, daemon) == ["192.168.1.1"]

    daemon.write_text(json.dumps({"dns": ["172.17.0.53", "not-an-ip", "10.0.0.53"]}))
    assert host_resolvers(resolv, systemd, daemon) == ["172.17.0.53", "10.0.0.53", "192.168.1.1"]

    daemon.write_text("{broken")
    resolv.unlink()
    systemd.unlink()
    assert host_resolvers(resolv, systemd, daemon) == []


def test_container_options() -> None:
    options = Hardening().container_options()
    assert options["cap_drop"] == ["NET_RAW", "MKNOD", "SETFCAP"] == list(DEFAULT_CAP_DROP)
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["pids_limit"] == 4096
    assert options["log_config"]["Type"] == "json-file"
    assert options["log_config"]["Config"] == {"max-size": "50m", "max-file": "3"}
    bare = Hardening(cap_drop=(), no_new_privileges=False, pids_limit=None).container_options()
    assert set(bare) == {"log_config", "ipc_mode"}  # a private IPC namespace, always
    assert bare["ipc_mode"] == options["ipc_mode"] == "private"


def test_capability_names_and_cli_helpers() -> None:
    assert normalize_capability("cap_net_raw") == "NET_RAW"
    assert normalize_capability(" SYS_ADMIN ") == "SYS_ADMIN"
    with pytest.raises(ValueError, match="unknown capability"):
        normalize_capability("NET_RAWW")
    assert split_list(["NET_RAW, MKNOD", "SETFCAP", "a b\tc"]) == [
        "NET_RAW",
        "MKNOD",
        "SETFCAP",
        "a",
        "b",
        "c",
    ]
    assert split_list(None) == []
    assert [format_size(n) for n in (50 * 1024**2, 3 * 1024**3, 2048, 1536, 1000)] == [
        "50m",
        "3g",
        "2k",
        "1536",
        "1000",
    ]


def test_rentals_get_cpu_and_memory_limits_by_default() -> None:
    from typer.testing import CliRunner

    from openclore.agent.settings import rental_cpus, rental_memory
    from openclore.cli.main import app as openclore_app

    gib = 1024**3
    # auto: a whole-server rental gets every CPU and the memory less the host's reserve
    assert rental_cpus("auto", 32) == 32.0
    assert rental_memory("auto", 256 * gib) == 254 * gib  # 2 GiB kept for the host
    assert rental_memory("auto", 8 * gib) == (8 * gib - 8 * gib // 10) // 1024**2 * 1024**2
    assert rental_cpus("12.5", 32) == 12.5 and rental_memory("48g", 256 * gib) == 48 * gib
    assert rental_cpus("none", 32) is None and rental_memory("none", 256 * gib) is None
    for bad in ("lots", "-1", "0.0.1"):
        with pytest.raises(ValueError, match="--cpus"):
            rental_cpus(bad, 32)
    with pytest.raises(ValueError, match="not a size"):
        rental_memory("much", gib)
    # and auto is what the agent runs with unless the host says otherwise
    help_text = CliRunner().invoke(openclore_app, ["agent", "--help"], terminal_width=200).output
    compact = " ".join(help_text.replace("│", " ").split())
    assert "CPU limit per rental: auto" in compact and "Memory limit per rental: auto" in compact


def test_agent_settings_read_the_agents_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """AgentSettings reads the OPENCLORE_AGENT_* variables the command's options read, lists
    space- or comma-separated as before; sizes, ranges and limits come out parsed."""
    from openclore.agent.settings import AgentSettings

    for name, value in {
        "OPENCLORE_AGENT_ALLOWED_REGISTRIES": "registry.lan, 10.0.0.5:5000",
        "OPENCLORE_AGENT_CAP_DROP": "net_raw,MKNOD",
        "OPENCLORE_AGENT_PUBLIC_HOST": "gpu1.example.net gpu1b.example.net",
        "OPENCLORE_AGENT_PORT_RANGE": "41000-41010",
        "OPENCLORE_AGENT_MEMORY": "48g",
        "OPENCLORE_AGENT_LOG_MAX_SIZE": "10m",
        "OPENCLORE_AGENT_DIRECT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    settings = AgentSettings()
    assert settings.allowed_registries == ["registry.lan", "10.0.0.5:5000"]
    assert settings.cap_drop == ("NET_RAW", "MKNOD")
    assert settings.public_host == ["gpu1.example.net", "gpu1b.example.net"]
    assert settings.port_range == (41000, 41010)
    assert settings.memory == 48 * 1024**3 and settings.cpus == "auto"
    assert settings.log_max_size == 10 * 1024**2 and settings.direct is True


def test_agent_options_and_settings_agree() -> None:
    """Every option of ``openclore agent`` that reads a variable reads its AgentSettings field's,
    and its default is the field's (parsed)."""
    import typer

    from openclore.agent.cli import agent
    from openclore.agent.settings import ENV_PREFIX, AgentSettings

    app = typer.Typer(add_completion=False)
    app.command()(agent)
    command = typer.main.get_command(app)
    renamed = {"allowed_registry": "allowed_registries"}
    checked = 0
    for param in command.params:
        assert param.name is not None
        field = renamed.get(param.name, param.name)
        if field == "register_only":
            continue
        assert field in AgentSettings.model_fields, field
        envvar = getattr(param, "envvar", None)
        if envvar is not None:
            assert envvar == ENV_PREFIX + field.upper()
        if param.default is not None:
            parsed = AgentSettings.model_validate({field: param.default})
            assert getattr(parsed, field) == AgentSettings.model_fields[field].default, field
        checked += 1
    assert checked == len(AgentSettings.model_fields)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--runtime", "podman"], "--runtime must be docker or simulated"),
        (["--runtime", "simulated", "--gpus", "some"], "--gpus must be auto, all or none"),
        (
            ["--runtime", "simulated", "--log-max-files", "0"],
            "--log-max-size and --log-max-files must be positive",
        ),
        (["--runtime", "simulated", "--port-range", "9-1"], "bad port range 9-1"),
        (["--runtime", "simulated", "--cpus", "lots"], "--cpus: auto, none or a number"),
        (["--cap-drop", "NET_RAWW"], "--cap-drop: unknown capability 'NET_RAWW'"),
    ],
)
def test_agent_refuses_a_bad_option_in_one_line(
    tmp_path: Path, options: list[str], message: str
) -> None:
    """A registered agent given a value that does not fit stops before it starts anything: a
    usage error (exit status 2) naming the option, as it always has."""
    from typer.testing import CliRunner

    from openclore.cli.main import app as openclore_app

    state = {"server_url": "http://[::1]:9", "server_id": 5, "agent_token": "t", "agent_id": "x"}
    (tmp_path / "agent.json").write_text(json.dumps(state))
    result = CliRunner().invoke(
        openclore_app, ["agent", "--state-dir", str(tmp_path), *options], terminal_width=200
    )
    assert result.exit_code == 2, result.output
    assert f"Invalid value: {message}" in result.output
