"""The package import graph goes one way: a new import against it fails here, not in review.

    domain  ←  ledger  ←  engine  ←  market  ←  api  ←  web  ←  serve  ←  cli
      (pure)    store ↗                ↑   ↖ gateway ←────────────┘
                                   protocol (shared with the host agent)

``serve`` is the composition root: it builds a serving process's app and starts the background
work (engine ticker, housekeeping, webhook deliverer, gateway), so it may import every server
package, and ``api`` knows nothing of ``gateway``. ``client`` (the SDK) and ``agent`` (the host
agent) run on other machines and import nothing of the server, nor does ``mcp`` (the MCP server
for AI agents, over the SDK; the pure ``domain`` gives it the error messages); ``protocol`` is the
one module both sides share, and it imports nothing of openclore. Within ``api`` the modules import
one way too (no circle, not even under ``TYPE_CHECKING``).
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
    "protocol": set(),
    "ledger": {"store"},
    "engine": {"domain", "ledger", "store"},
    "market": {"domain", "ledger", "engine", "store", "config", "protocol"},
    "api": {"domain", "ledger", "engine", "market", "store", "config", "protocol"},
    # the web console: pages over the market use cases, mounted on the API's app (no SQL)
    "web": {"api", "market", "domain", "engine", "config"},
    "client": set(),
    # the MCP server for AI agents: runs beside the agent and speaks to a market through the SDK
    "mcp": {"client", "domain"},
    "agent": {"protocol"},
    "gateway": {"market", "store", "config"},
    # the composition root: a serving process's app and its background work
    "serve": {
        "api",
        "web",
        "gateway",
        "market",
        "engine",
        "ledger",
        "domain",
        "store",
        "config",
        "protocol",
    },
    "cli": {
        "serve",
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
        "mcp",
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
    return parts[1]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in root.rglob("*.py"):
        package = _package(path, root)
        for module in _imports(path):
            target = _target(module)
            if target is not None and target != package:
                graph[package].add(target)
    return graph


def test_packages_import_only_downwards() -> None:
    leaks = []
    for package, targets in import_graph().items():
        allowed = ALLOWED.get(package)
        assert allowed is not None, f"new package {package!r}: add it to ALLOWED"
        for target in targets:
            if target not in allowed:
                leaks.append(f"{package} imports {target}")
    assert leaks == []


def test_the_domain_is_pure() -> None:
    for path in (ROOT / "domain").rglob("*.py"):
        roots = {module.split(".")[0] for module in _imports(path)}
        assert not roots & DOMAIN_FORBIDDEN, (path.name, roots & DOMAIN_FORBIDDEN)


def _module_graph(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` → the modules of the same package it imports (at any level,
    ``TYPE_CHECKING`` blocks and function bodies included)."""
    prefix = f"openclore.{package.name}."
    modules = {path.stem for path in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        found = set()
        for module in _imports(path):
            if module.startswith(prefix):
                name = module[len(prefix) :].split(".")[0]
                if name in modules and name != path.stem:
                    found.add(name)
        graph[path.stem] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (its modules in order), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_api_modules_import_without_a_circle() -> None:
    assert _cycle(_module_graph(ROOT / "api")) == []


def _tree_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every module of the package (``market.orders``, ``web.pages.renter``…) → the modules it
    imports, at any level (``TYPE_CHECKING`` blocks and function bodies included); ``from
    openclore.market import orders`` counts as importing the module ``market.orders``."""
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if not node.module.startswith("openclore"):
                    continue
                base = node.module[len("openclore") :].lstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}".strip(".")
                    found.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                found |= {a.name[len("openclore.") :] for a in node.names}
        graph[name] = {m for m in found if m in modules and m not in (name, "")}
    return graph


def test_no_module_imports_itself_round_a_circle() -> None:
    """Not even under TYPE_CHECKING: a type a module needs from one that imports it is a
    Protocol of its own (store.freshness, store.migrate)."""
    graph = _tree_graph()
    assert len(graph) > 100 and "market.orders" in graph["api.v1"]
    assert _cycle(graph) == []


# generated code and migrations are what they are; everything else is read by people
SIZE_EXEMPT = ("store/migrations/", "client/_sync.py")
MAX_FUNCTION_LINES = 120
MAX_FILE_LINES = 800


def _sizes(root: Path = ROOT) -> tuple[list[str], list[str]]:
    long_functions, long_files = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(SIZE_EXEMPT):
            continue
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
    return long_functions, long_files


def test_functions_and_files_stay_readable() -> None:
    """No function over 120 lines and no hand-written file over 800 (generated and migration
    files exempt): a page can be read, and tested, alone."""
    assert _sizes() == ([], [])


def test_the_size_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def long() -> None:\n{body}\n")
    (tmp_path / "store" / "migrations").mkdir(parents=True)
    (tmp_path / "store" / "migrations" / "m.py").write_text(f"def upgrade() -> None:\n{body}\n")
    (tmp_path / "big.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    assert _sizes(tmp_path) == (["long.py:1 long: 121 lines"], ["big.py: 801 lines"])


def test_the_checker_sees_a_leak(tmp_path: Path) -> None:
    """The graph really is read from the sources: a module importing upwards shows up."""
    (tmp_path / "domain").mkdir()
    (tmp_path / "domain" / "rules.py").write_text("from openclore.api.wire import dumps\n")
    (tmp_path / "market").mkdir()
    (tmp_path / "market" / "x.py").write_text("import openclore.protocol\n")
    graph = import_graph(tmp_path)
    assert graph == {"domain": {"api"}, "market": {"protocol"}}


def test_the_checker_sees_a_circle(tmp_path: Path) -> None:
    """A circle hidden under TYPE_CHECKING counts: the module graph reads every import."""
    api = tmp_path / "api"
    api.mkdir()
    (api / "a.py").write_text("from openclore.api.b import B\n")
    (api / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from openclore.api.a import A\n"
    )
    (api / "c.py").write_text("from openclore.api import a\n")
    assert _module_graph(api) == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycle(_module_graph(api)) == ["a", "b", "a"]
