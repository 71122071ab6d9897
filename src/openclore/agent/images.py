"""Image references and the registry policy: the registries the host's Docker daemon may pull from.

A pull is made by the host's daemon, from the host's network namespace, outside the rentals'
firewall. A renter who could name any registry could make the daemon connect to the host's
loopback or LAN (``127.0.0.1:18432/probe:latest``) and read from the error whether a port is
open. So, before any pull:

- the reference is parsed the way the daemon parses it (:func:`parse_reference`, after
  ``distribution/reference``): the first path component is a registry only when it contains
  ``.`` or ``:``, is ``localhost``, or has upper-case letters; otherwise the image is Docker
  Hub's;
- an explicit registry is refused when its host is, or resolves to, an address that is not
  public (:func:`address_problem`: loopback, private, link-local, CGNAT, unspecified, multicast,
  reserved, documentation…), unless the host listed it in ``allowed_registries``;
- a registry name that does not resolve within a few seconds is refused too (the daemon would
  fail to pull from it anyway, and a name that resolves only for the daemon cannot sneak by).

What stays possible, and is documented in ``docs/host-guide.md``: a public registry's name whose
DNS answer changes between this check and the daemon's own lookup (DNS rebinding), and a public
registry that redirects the daemon elsewhere. Errors on the wire are generic either way, so the
daemon's connection errors never reach the renter.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DOCKER_HUB = "docker.io"
_HUB_NAMES = {"docker.io", "index.docker.io"}  # the daemon normalises index.docker.io
RESOLVE_TIMEOUT = 5.0

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")
_NAME_MAX = 255

CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class InvalidReference(ValueError):
    """Not an image reference the daemon would accept."""


@dataclass(frozen=True)
class ImageReference:
    name: str  # as written, without tag or digest: what is pulled
    registry: str  # host[:port] as written; "docker.io" when implicit
    host: str  # lower case, without brackets
    port: int | None
    path: str  # the repository path in the registry ("library/ubuntu" for "ubuntu")
    tag: str | None
    digest: str | None
    explicit_registry: bool

    @property
    def pull_tag(self) -> str:
        """What goes in the pull's ``tag`` parameter: the digest wins, else the tag."""
        return self.digest or self.tag or "latest"


def parse_reference(image: str) -> ImageReference:
    """Parse ``[registry/]path[:tag][@digest]`` like the Docker daemon (``reference``
    ``ParseNormalizedNamed``); raises :class:`InvalidReference`."""
    if not image or image != image.strip() or _IMAGE_ID.fullmatch(image):
        raise InvalidReference(image)
    name_tag, at, digest = image.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise InvalidReference(image)
    name, tag = name_tag, None
    colon, slash = name_tag.rfind(":"), name_tag.rfind("/")
    if colon > slash:
        name, tag = name_tag[:colon], name_tag[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(image)
    if not name or len(name) > _NAME_MAX:
        raise InvalidReference(image)
    first, sep, rest = name.partition("/")
    explicit = bool(sep) and (
        any(c in first for c in ".:") or first == "localhost" or first.lower() != first
    )
    if explicit:
        registry, path = first, rest
        if not _DOMAIN.fullmatch(registry):
            raise InvalidReference(image)
    else:
        registry, path = DOCKER_HUB, name
    if not _PATH.fullmatch(path):
        raise InvalidReference(image)
    host, port = split_host_port(registry)
    if host in _HUB_NAMES and port is None:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    return ImageReference(
        name=name,
        registry=registry,
        host=host,
        port=port,
        path=path,
        tag=tag,
        digest=digest or None,
        explicit_registry=explicit,
    )


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidReference(text)
        host, rest = text[1:end], text[end + 1 :]
        if rest and not re.fullmatch(r":[0-9]+", rest):
            raise InvalidReference(text)
        port = int(rest[1:]) if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port = text, None
    else:
        host, sep, port_text = text.partition(":")
        if sep and not port_text.isdigit():
            raise InvalidReference(text)
        port = int(port_text) if sep else None
    if not host or (port is not None and not 0 < port < 65536):
        raise InvalidReference(text)
    return host.lower().rstrip("."), port


def address_problem(address: IPAddress) -> str | None:
    """Why the host's daemon must not connect to ``address`` (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the same IPv4 address, written as IPv6
            return address_problem(address.ipv4_mapped)
        embedded = address.sixtofour  # 6to4 and NAT64 reach the embedded IPv4 address
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded)
            if problem is not None:
                return problem
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "CGNAT"  # 100.64/10: not is_private in every Python version
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def resolve(host: str, port: int | None, timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``, as the daemon would use); raises
    ``OSError`` when it does not resolve, or not within ``timeout`` seconds."""
    result: list[list[str]] = []
    failure: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
            result.append([str(info[4][0]) for info in infos])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    # getaddrinfo has no timeout of its own: a daemon thread that may outlive the wait
    thread = threading.Thread(target=lookup, name="openclore-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if result:
        return result[0]
    if failure:
        raise OSError(f"{host} does not resolve: {failure[0]}")
    raise OSError(f"{host} did not resolve within {timeout:g}s")


class RegistryRefused(Exception):
    """The registry is not one the daemon may be sent to. ``args[0]`` is safe to show the renter;
    ``detail`` (addresses, resolver errors) is for the host's log only."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class RegistryPolicy:
    """Refuses registries whose addresses are not public, except those the host allowed.

    ``allowed``: ``host`` (any port) or ``host:port`` entries (``[v6]:port`` for IPv6), compared
    case-insensitively with the registry as written in the image (no resolution for them).
    """

    def __init__(
        self,
        allowed: Iterable[str] = (),
        *,
        resolver: Callable[[str, int | None], list[str]] | None = None,
    ) -> None:
        self.allowed: set[tuple[str, int | None]] = set()
        for entry in allowed:
            if entry.strip():
                self.allowed.add(split_host_port(entry))
        self._resolve = resolver or resolve

    def is_allowed(self, ref: ImageReference) -> bool:
        return (ref.host, None) in self.allowed or (ref.host, ref.port) in self.allowed

    def check(self, ref: ImageReference) -> None:
        """Raises :class:`RegistryRefused` unless the daemon may pull ``ref``."""
        if not ref.explicit_registry or ref.registry == DOCKER_HUB or self.is_allowed(ref):
            return
        refused = f"registry {ref.registry} is not allowed"
        try:
            literal: IPAddress | None = ipaddress.ip_address(ref.host.partition("%")[0])
        except ValueError:
            literal = None
        if literal is not None:
            problem = address_problem(literal)
            if problem is not None:
                raise RegistryRefused(refused, f"{literal} is {problem}")
            return
        try:
            addresses = self._resolve(ref.host, ref.port)
        except OSError as exc:
            raise RegistryRefused(f"registry {ref.registry} cannot be resolved", str(exc)) from None
        if not addresses:
            raise RegistryRefused(f"registry {ref.registry} cannot be resolved", "no addresses")
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.partition("%")[0])
            except ValueError:
                raise RegistryRefused(refused, f"unparsable address {text!r}") from None
            problem = address_problem(address)
            if problem is not None:
                raise RegistryRefused(refused, f"{ref.host} resolves to {address} ({problem})")
