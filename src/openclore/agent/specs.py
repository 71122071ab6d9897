"""What the machine is: the SPEC's ``specs`` object plus ``gpu_array``.

``specs`` = ``{mb, cpu, cpus "cores/threads", ram GB, disk, disk_speed MB/s, gpu "Nx NAME",
gpuram GB, net{up, down, cc}}``. GPUs come from NVML (``nvidia-ml-py``), else from
``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``, else the machine is
reported honestly as having none (``gpu "0x"``, ``gpuram 0``, ``gpu_array []``).

Network speeds and the country cannot be measured without reaching the internet: they are the
host's configured values (``--net-up``, ``--net-down`` in Mbit/s, ``--country``), 0 / "" if unset.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # psutil is a dependency; the stdlib fallbacks keep scripts/gpu-specs-check.sh usable anywhere
    import psutil  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised on bare machines only
    psutil = None


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: float


@dataclass
class SpecsConfig:
    disk_path: str = "/var/lib/docker"  # where containers' data lives
    disk_test_mb: int = 64
    disk_test_max_seconds: float = 10.0
    net_up: float = 0.0
    net_down: float = 0.0
    country: str = ""
    gpu_source: str = "auto"  # auto | nvml | nvidia-smi | none


@dataclass
class Specs:
    specs: dict[str, Any]
    gpu_array: list[str] = field(default_factory=list)
    gpu_source: str = "none"  # which source answered (for logs)
    notes: list[str] = field(default_factory=list)
    gpu_limits: dict[str, Any] | None = None  # GigaSPOT: what the GPUs allow (agent.gpu)

    def to_json(self) -> dict[str, Any]:
        return {
            "specs": self.specs,
            "gpu_array": self.gpu_array,
            "gpu_source": self.gpu_source,
            "notes": self.notes,
        }


# ----------------------------------------------------------------------------- GPUs


def gpus_from_nvml(nvml: Any) -> list[Gpu]:
    """Read the GPUs through an NVML module (``pynvml``; tests pass a recorded fake)."""
    nvml.nvmlInit()
    try:
        out: list[Gpu] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # older bindings return bytes
                name = name.decode("utf-8", "replace")
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(Gpu(str(name).strip(), float(memory.total) / (1024 * 1024)))
        return out
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``."""
    out: list[Gpu] = []
    for line in output.splitlines():
        line = line.strip()
        if not line:
            continue
        name, sep, memory = line.rpartition(",")
        if not sep:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        out.append(Gpu(name.strip(), float(memory.strip())))
    return out


def gpus_from_nvidia_smi(binary: str = "nvidia-smi", timeout: float = 20.0) -> list[Gpu]:
    path = shutil.which(binary)
    if path is None:
        raise FileNotFoundError(f"{binary} not found")
    proc = subprocess.run(
        [path, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"nvidia-smi exited with {proc.returncode}")
    return parse_nvidia_smi(proc.stdout)


def detect_gpus(source: str = "auto", nvml: Any = None) -> tuple[list[Gpu], str, list[str]]:
    """GPUs, which source answered, and notes on the sources that did not."""
    notes: list[str] = []
    if source in ("auto", "nvml"):
        try:
            if nvml is None:
                import pynvml  # type: ignore[import-untyped]

                nvml = pynvml
            return gpus_from_nvml(nvml), "nvml", notes
        except Exception as exc:
            notes.append(f"NVML: {_first_line(exc)}")
    if source in ("auto", "nvidia-smi"):
        try:
            return gpus_from_nvidia_smi(), "nvidia-smi", notes
        except Exception as exc:
            notes.append(f"nvidia-smi: {_first_line(exc)}")
    return [], "none", notes


def gpu_fields(gpus: list[Gpu]) -> dict[str, Any]:
    """``gpu`` ("Nx NAME"; mixed machines "2x A, 1x B"), ``gpuram`` (GB of the smallest GPU)."""
    if not gpus:
        return {"gpu": "0x", "gpuram": 0}
    counts = Counter(g.name for g in gpus)
    gpu = ", ".join(f"{n}x {name}" for name, n in counts.most_common())
    gpuram = round(min(g.memory_mib for g in gpus) / 1024)
    return {"gpu": gpu, "gpuram": gpuram}


# ----------------------------------------------------------------------------- the rest


def motherboard(root: str = "/sys/class/dmi/id") -> str:
    for name in ("board_name", "product_name"):
        try:
            value = Path(root, name).read_text().strip()
        except OSError:
            continue
        if value and value.lower() not in ("default string", "to be filled by o.e.m."):
            return value
    return "unknown"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "cpu model"):
            return " ".join(value.split())
    return "unknown"


def cpu_counts() -> str:
    if psutil is not None:
        threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        cores = psutil.cpu_count(logical=False) or threads
        return f"{cores}/{threads}"
    threads = os.cpu_count() or 1
    pairs: set[tuple[str, str]] = set()
    physical = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical = value.strip()
            elif key.strip() == "core id":
                pairs.add((physical, value.strip()))
    except OSError:
        pass
    return f"{len(pairs) or threads}/{threads}"


def ram_gb() -> float:
    if psutil is not None:
        return round(float(psutil.virtual_memory().total) / 1024**3, 2)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) * 1024 / 1024**3, 2)
    return 0.0


def existing_dir(path: str) -> str:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


def disk_kind(path: str) -> str:
    """NVMe, SSD or HDD for the block device holding ``path`` (best effort)."""
    try:
        device = _device_of(path)
    except OSError:
        return "disk"
    if device is None:
        return "disk"
    base = Path(device).name
    if base.startswith("nvme"):
        return "NVMe"
    parent = _parent_block(base)
    try:
        rotational = Path(f"/sys/block/{parent}/queue/rotational").read_text().strip()
    except OSError:
        return "disk"
    return "HDD" if rotational == "1" else "SSD"


def _device_of(path: str) -> str | None:
    best: tuple[int, str] | None = None
    target = os.path.realpath(path)
    if psutil is not None:
        mounts = [(p.device, p.mountpoint) for p in psutil.disk_partitions(all=False)]
    else:
        mounts = [
            (fields[0], fields[1])
            for fields in (line.split() for line in Path("/proc/mounts").read_text().splitlines())
            if len(fields) > 1 and fields[0].startswith("/dev/")
        ]
    for device, mount in mounts:
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and (
            best is None or len(mount) > best[0]
        ):
            best = (len(mount), device)
    return None if best is None else best[1]


def _parent_block(name: str) -> str:
    if Path(f"/sys/block/{name}").exists():
        return name
    for block in Path("/sys/block").glob("*"):
        if Path(block, name).exists():
            return block.name
    return name


def disk_speed(path: str, size_mb: int = 64, max_seconds: float = 10.0) -> float:
    """Sequential write speed in MB/s: ``size_mb`` MB in 4 MB blocks, fsync'd, at most
    ``max_seconds`` (the speed of what was written by then)."""
    block = os.urandom(4 * 1024 * 1024)
    written = 0
    fd, name = tempfile.mkstemp(prefix=".openclore-speed-", dir=path)
    try:
        start = time.perf_counter()
        deadline = start + max_seconds
        while written < size_mb * 1024 * 1024 and time.perf_counter() < deadline:
            written += os.write(fd, block)
        os.fsync(fd)
        elapsed = max(time.perf_counter() - start, 1e-6)
    finally:
        os.close(fd)
        os.unlink(name)
    return round(written / (1024 * 1024) / elapsed, 1)


def collect(config: SpecsConfig | None = None, nvml: Any = None) -> Specs:
    """Measure this machine once."""
    config = config or SpecsConfig()
    notes: list[str] = []
    gpus, source, gpu_notes = detect_gpus(config.gpu_source, nvml)
    if source == "none":
        notes.extend(gpu_notes)
    disk_path = existing_dir(config.disk_path)
    usage = shutil.disk_usage(disk_path)
    try:
        speed = disk_speed(disk_path, config.disk_test_mb, config.disk_test_max_seconds)
    except OSError as exc:
        notes.append(f"disk speed test: {exc}")
        speed = 0.0
    specs: dict[str, Any] = {
        "mb": motherboard(),
        "cpu": cpu_model(),
        "cpus": cpu_counts(),
        "ram": ram_gb(),
        "disk": f"{disk_kind(disk_path)} {round(usage.free / 1024**3, 1)}GB",
        "disk_speed": speed,
        **gpu_fields(gpus),
        "net": {"up": config.net_up, "down": config.net_down}
        | ({"cc": config.country} if config.country else {}),
    }
    return Specs(specs=specs, gpu_array=[g.name for g in gpus], gpu_source=source, notes=notes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def main() -> None:
    """``python -m openclore.agent.specs``: measure once and print JSON."""
    import argparse

    parser = argparse.ArgumentParser(description="Measure this machine's specs once.")
    parser.add_argument("--disk-path", default=SpecsConfig.disk_path)
    parser.add_argument(
        "--gpu-source", default="auto", choices=["auto", "nvml", "nvidia-smi", "none"]
    )
    parser.add_argument(
        "--all-sources",
        action="store_true",
        help="also ask NVML and nvidia-smi separately (to check that both agree)",
    )
    args = parser.parse_args()
    result = collect(SpecsConfig(disk_path=args.disk_path, gpu_source=args.gpu_source))
    out = result.to_json()
    if args.all_sources:
        sources: dict[str, Any] = {}
        for source in ("nvml", "nvidia-smi"):
            gpus, answered, notes = detect_gpus(source)
            sources[source] = (
                {
                    **gpu_fields(gpus),
                    "gpu_array": [g.name for g in gpus],
                    "memory_mib": [g.memory_mib for g in gpus],
                }
                if answered != "none"
                else {"error": "; ".join(notes)}
            )
        out["sources"] = sources
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
