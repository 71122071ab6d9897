"""Helpers shared by the benchmarks: start servers, run wrk, pick the median run, record results.

Every benchmark reports the median *run* (the whole row of the run whose primary metric is the
median, so p50 and p99 come from the same run as the rate) and writes its result, with the
machine it ran on, to ``bench/results/<name>.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REQUEST_SCRIPT = BENCH_DIR / "rotate_tokens.lua"


class BenchmarkFailed(Exception):
    """A run gave wrong answers: it is a failure, never a fast result."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(ready_url, timeout=2)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.time() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"{args} did not start: {err}") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uvicorn_args(target: str, port: int, *, factory: bool = False) -> list[str]:
    args = [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--log-level", "warning"]
    return [*args, "--factory"] if factory else args


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_CHECK_FIELDS = (
    "responses",
    "bad_status",
    "bad_code",
    "no_code",
    "connect",
    "read",
    "write",
    "timeout",
)


def wrk(
    url: str,
    *,
    seconds: int,
    connections: int,
    threads: int = 2,
    timeout_s: int = 30,
    headers: dict[str, str] | None = None,
    tokens: Path | None = None,
) -> dict[str, float]:
    """Run wrk with ``rotate_tokens.lua`` (``check_code.lua``'s checks, every request made in
    wrk's dynamic mode): req/s, p50/p99 latency in ms, and the error counts. With ``tokens`` (a
    file, one API token per line) each request carries the next of them.

    An answer is an error unless its status is 2xx and its body's ``code`` is 0; socket errors
    (timeouts included: wrk leaves timed-out requests out of its latency figures) count too.
    The caller decides what a run with errors means (:func:`require_clean`)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(REQUEST_SCRIPT),
    ]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    cmd.append(url)
    if tokens is not None:
        cmd += ["--", str(tokens), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    check = re.search(r"^OPENCLORE-CHECK (.*)$", out, re.M)
    if rps is None or requests is None or check is None:
        raise BenchmarkFailed(f"cannot read wrk's output:\n{out}")
    counts = {k: int(v) for k, v in (f.split("=") for f in check.group(1).split())}
    if set(counts) != set(_CHECK_FIELDS):
        raise BenchmarkFailed(f"unexpected check line: {check.group(0)}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            raise BenchmarkFailed(f"wrk printed no p{p}:\n{out}")
        return float(m.group(1)) * _UNITS[m.group(2)]

    socket_errors = counts["connect"] + counts["read"] + counts["write"] + counts["timeout"]
    return {
        "rps": float(rps.group(1)),
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "requests": int(requests.group(1)),
        "responses_checked": counts["responses"],
        "errors": counts["bad_status"] + counts["bad_code"] + counts["no_code"] + socket_errors,
        "bad_status": counts["bad_status"],
        "bad_code": counts["bad_code"],
        "no_code": counts["no_code"],
        "socket_errors": socket_errors,
    }


def require_clean(label: str, run: dict[str, Any]) -> None:
    """A wrk run with any error answer (or none at all) is a failed benchmark."""
    if run["errors"] or run["responses_checked"] == 0:
        raise BenchmarkFailed(
            f"{label}: {run['errors']} of {run['responses_checked']} answers were errors "
            f"(status not 2xx {run['bad_status']}, code != 0 {run['bad_code']}, no code "
            f"{run['no_code']}, socket errors {run['socket_errors']}): not a valid measurement"
        )


def median_index(values: Sequence[float]) -> int:
    """Index of the median value (the lower middle one for an even count)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The whole run whose ``key`` is the median: every figure of it comes from that one run."""
    return runs[median_index([float(r[key]) for r in runs])]


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    with suppress(OSError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        commit = subprocess.run(
            ["git", "-C", str(BENCH_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(BENCH_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["commit"] = commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json``; other load on the machine shows in the load averages
    at start and at the end."""
    with suppress(OSError, KeyError):
        payload["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
