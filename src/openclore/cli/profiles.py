"""Where the client commands go and who they are: options, environment, then a profile.

Configuration, first found wins: ``--url``/``--api-key``; ``OPENCLORE_URL``/``OPENCLORE_API_KEY``;
the profile chosen with ``--profile``/``OPENCLORE_PROFILE`` (else the file's ``profile`` key, else
``default``) in ``~/.config/openclore/config.toml`` (``OPENCLORE_CONFIG`` names another file)::

    profile = "local"

    [profiles.local]
    url = "http://127.0.0.1:8000"
    api_key = "6FcuR7ibcwKR1Z32lEFoSotzUUtzKO2H"

    [profiles.clore]
    url = "https://api.clore.ai"
    api_key = "…"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openclore.cli.output import fail
from openclore.client import DEFAULT_BASE_URL


@dataclass(frozen=True)
class Target:
    """Where the commands go and who they are."""

    url: str
    api_key: str | None
    profile: str | None


def config_path() -> Path:
    explicit = os.environ.get("OPENCLORE_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "openclore" / "config.toml"


def load_target(url: str | None, api_key: str | None, profile: str | None) -> Target:
    path = config_path()
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            fail(f"cannot read {path}: {exc}")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        fail(f"{path}: [profiles] must be a table")
    chosen = profile or data.get("profile")
    section: dict[str, Any] = {}
    if chosen:
        found = profiles.get(chosen)
        if not isinstance(found, dict):
            known = ", ".join(sorted(profiles)) or "none"
            fail(f"no profile {chosen!r} in {path} (profiles: {known})")
        section = found
    elif isinstance(profiles.get("default"), dict):
        chosen, section = "default", profiles["default"]
    else:
        section = {k: v for k, v in data.items() if k in ("url", "api_key")}
    resolved_url = url or os.environ.get("OPENCLORE_URL") or section.get("url") or DEFAULT_BASE_URL
    resolved_key = api_key or os.environ.get("OPENCLORE_API_KEY") or section.get("api_key")
    return Target(str(resolved_url), str(resolved_key) if resolved_key else None, chosen)
