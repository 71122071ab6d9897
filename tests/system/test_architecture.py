"""The package import graph goes one way: a new import against it fails here, not in review.

    domain  ←  ledger  ←  engine  ←  market  ←  api  ←  web  ←  cli
      (pure)    store ↗                  ↖ agent.protocol (shared with the host agent)

``client`` (the SDK) and ``agent`` (the host agent) run on other machines and import nothing of
the server; ``agent.protocol`` is the one module both sides share.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import openclore

ROOT = Path(openclore.__file__).parent

# package → the packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "store": set(),
    "config": set(),
    "ledger": {"store"},
    "engine": {"domain", "ledger", "store"},
    "market": {"domain", "ledger", "engine", "store", "config", "agent.protocol"},
    "api": {"domain", "ledger", "engine", "market", "store", "config", "agent.protocol", "gateway"},
    # the web console: pages over the market use cases, mounted on the API's app (no SQL)
    "web": {"api", "market", "domain", "engine", "config"},
    "client": set(),
    "agent": set(),
    "gateway": {"market", "store", "config"},
    "cli": {
        "api",
        "web",
        "market",
        "engine",
        "ledger",
        "domain",
        "store",
        "config",
        "client",
        "agent",
        "gateway",
    },
    "__main__": {"cli"},
}
# third-party modules that would put I/O or a wire format into the pure rules
DOMAIN_FORBIDDEN = {"orjson", "sqlalchemy", "starlette", "fastapi", "httpx", "psycopg"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def _package(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _target(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "openclore" or len(parts) < 2:
        return None
    if parts[1] == "agent" and len(parts) > 2 and parts[2] == "protocol":
        return "agent.protocol"
    return parts[1]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in root.rglob("*.py"):
        package = _package(path, root)
        for module in _imports(path):
            target = _target(module)
            if target is not None and target != package and target.split(".")[0] != package:
                graph[package].add(target)
    return graph


def test_packages_import_only_downwards() -> None:
    leaks = []
    for package, targets in import_graph().items():
        allowed = ALLOWED.get(package)
        assert allowed is not None, f"new package {package!r}: add it to ALLOWED"
        for target in targets:
            if target not in allowed and target.split(".")[0] not in allowed:
                leaks.append(f"{package} imports {target}")
    assert leaks == []


def test_the_domain_is_pure() -> None:
    for path in (ROOT / "domain").rglob("*.py"):
        roots = {module.split(".")[0] for module in _imports(path)}
        assert not roots & DOMAIN_FORBIDDEN, (path.name, roots & DOMAIN_FORBIDDEN)


def test_the_agent_protocol_stands_alone() -> None:
    """Both sides load it: it imports nothing of openclore."""
    modules = _imports(ROOT / "agent" / "protocol.py")
    assert not [m for m in modules if m.startswith("openclore")]


def test_the_checker_sees_a_leak(tmp_path: Path) -> None:
    """The graph really is read from the sources: a module importing upwards shows up."""
    (tmp_path / "domain").mkdir()
    (tmp_path / "domain" / "rules.py").write_text("from openclore.api.wire import dumps\n")
    (tmp_path / "market").mkdir()
    (tmp_path / "market" / "x.py").write_text("import openclore.agent.protocol\n")
    graph = import_graph(tmp_path)
    assert graph == {"domain": {"api"}, "market": {"agent.protocol"}}
