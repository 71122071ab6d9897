"""``client/_sync.py`` is generated from ``client/_async.py`` by ``scripts/unasync.py``."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from openclore.client import AsyncClient, AsyncSandbox, Client, Sandbox

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_client_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    header = (ROOT / "src/openclore/client/_sync.py").read_text(encoding="utf-8").splitlines()[0]
    assert header == "# generated from _async.py by scripts/unasync.py — do not edit"


def test_check_fails_on_a_hand_edited_sync_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    target = tmp_path / "_sync.py"
    target.write_text(
        (ROOT / "src/openclore/client/_sync.py").read_text(encoding="utf-8") + "# edited\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(script, "TARGET", target)
    assert script.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert script.main([]) == 0  # regenerate
    assert script.main(["--check"]) == 0
    assert "# edited" not in target.read_text(encoding="utf-8")


def test_translation_rules() -> None:
    script = load_script()
    source = (ROOT / "src/openclore/client/_async.py").read_text(encoding="utf-8")
    generated = script.unasync(source)
    assert "import asyncio" not in generated
    assert "time.sleep(delay)" in generated
    assert "def __enter__(self) -> Client:" in generated
    assert "self._http.close()" in generated
    with pytest.raises(script.UnasyncError, match="asyncio"):
        script.unasync(source + "\nasyncio.gather()\n")
    with pytest.raises(script.UnasyncError, match="PROSE"):
        script.unasync(source.replace("The asyncio twin of", "The twin of"))


@pytest.mark.parametrize(("sync", "async_"), [(Client, AsyncClient), (Sandbox, AsyncSandbox)])
def test_both_clients_have_the_same_api(sync: type, async_: type) -> None:
    renamed = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}

    def api(cls: type) -> dict[str, list[str]]:
        return {
            renamed.get(name, name): list(inspect.signature(fn).parameters)
            for name, fn in vars(cls).items()
            if callable(fn) and (not name.startswith("_") or name.startswith("__"))
        }

    assert api(sync) == api(async_)
    for name, fn in vars(async_).items():
        if callable(fn) and name not in ("__init__",):
            # awaitable, or an async iterator (events)
            assert inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn), name
