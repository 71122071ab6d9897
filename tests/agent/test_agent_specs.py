"""The specs collector against recorded NVML and nvidia-smi outputs, and on this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from openclore.agent.specs import (
    Gpu,
    SpecsConfig,
    collect,
    cpu_model,
    detect_gpus,
    disk_speed,
    gpu_fields,
    gpus_from_nvml,
    motherboard,
    parse_nvidia_smi,
)

# `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`, as recorded
SMI_8X_H100 = "".join("NVIDIA H100 80GB HBM3, 81559\n" for _ in range(8))
SMI_MIXED = "NVIDIA GeForce RTX 4090, 24564\nNVIDIA GeForce RTX 3090, 24576\n"
SMI_1080TI = "NVIDIA GeForce GTX 1080 Ti, 11264\n"


class FakeNVMLError(Exception):
    pass


def fake_nvml(devices: list[tuple[Any, int]], *, fail_init: bool = False) -> Any:
    """A stand-in for the ``pynvml`` module, answering what NVML answered on real machines."""
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")

    return SimpleNamespace(
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: devices[h][0],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            total=devices[h][1], free=devices[h][1], used=0
        ),
    )


def test_nvml_devices_are_read_and_nvml_shut_down() -> None:
    # NVML reports bytes; older bindings return names as bytes
    a100 = 85899345920
    nvml = fake_nvml([(b"NVIDIA A100-SXM4-80GB", a100), ("NVIDIA A100-SXM4-80GB", a100)])
    gpus = gpus_from_nvml(nvml)
    assert gpus == [Gpu("NVIDIA A100-SXM4-80GB", 81920.0)] * 2
    assert nvml.calls == ["init", "shutdown"]
    assert gpu_fields(gpus) == {"gpu": "2x NVIDIA A100-SXM4-80GB", "gpuram": 80}


def test_nvml_first_then_nvidia_smi_then_none(monkeypatch: pytest.MonkeyPatch) -> None:
    h100 = fake_nvml([("NVIDIA H100 80GB HBM3", 85520809984)])
    gpus, source, _ = detect_gpus("auto", h100)
    assert source == "nvml" and gpus_fields_of(gpus) == ("1x NVIDIA H100 80GB HBM3", 80)

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda *a, **kw: subprocess.CompletedProcess(a, 0, SMI_8X_H100, ""),
    )
    gpus, source, notes = detect_gpus("auto", fake_nvml([], fail_init=True))
    assert source == "nvidia-smi"
    assert gpus_fields_of(gpus) == ("8x NVIDIA H100 80GB HBM3", 80)
    assert "NVML: NVML Shared Library Not Found" in notes

    monkeypatch.setattr(shutil, "which", lambda name: None)
    gpus, source, notes = detect_gpus("auto", fake_nvml([], fail_init=True))
    assert (gpus, source) == ([], "none")
    assert gpu_fields(gpus) == {"gpu": "0x", "gpuram": 0}
    assert any("nvidia-smi" in n for n in notes)


def gpus_fields_of(gpus: list[Gpu]) -> tuple[str, int]:
    fields = gpu_fields(gpus)
    return fields["gpu"], fields["gpuram"]


def test_nvidia_smi_failure_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda *a, **kw: subprocess.CompletedProcess(
            a, 9, "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
        ),
    )
    gpus, source, notes = detect_gpus("nvidia-smi")
    assert (gpus, source) == ([], "none")
    assert "couldn't communicate" in notes[0]


@pytest.mark.parametrize(
    ("output", "gpu", "gpuram", "names"),
    [
        (SMI_8X_H100, "8x NVIDIA H100 80GB HBM3", 80, ["NVIDIA H100 80GB HBM3"] * 8),
        (
            SMI_MIXED,
            "1x NVIDIA GeForce RTX 4090, 1x NVIDIA GeForce RTX 3090",
            24,
            ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"],
        ),
        (SMI_1080TI, "1x NVIDIA GeForce GTX 1080 Ti", 11, ["NVIDIA GeForce GTX 1080 Ti"]),
        ("", "0x", 0, []),
    ],
)
def test_recorded_nvidia_smi_outputs(output: str, gpu: str, gpuram: int, names: list[str]) -> None:
    gpus = parse_nvidia_smi(output)
    assert [g.name for g in gpus] == names
    assert gpu_fields(gpus) == {"gpu": gpu, "gpuram": gpuram}


def test_garbage_from_nvidia_smi_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_nvidia_smi("No devices were found\n")


def test_board_and_cpu(tmp_path: Path) -> None:
    (tmp_path / "board_name").write_text("Z590 GAMING X\n")
    assert motherboard(str(tmp_path)) == "Z590 GAMING X"
    (tmp_path / "board_name").write_text("Default string\n")
    (tmp_path / "product_name").write_text("ESC8000A-E11\n")
    assert motherboard(str(tmp_path)) == "ESC8000A-E11"
    assert motherboard(str(tmp_path / "missing")) == "unknown"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\n"
        "model name\t: 11th Gen Intel(R) Core(TM) i9-11900 @ 2.50GHz\n"
    )
    assert cpu_model(str(cpuinfo)) == "11th Gen Intel(R) Core(TM) i9-11900 @ 2.50GHz"


def test_disk_speed_is_bounded_in_time(tmp_path: Path) -> None:
    speed = disk_speed(str(tmp_path), size_mb=8, max_seconds=5)
    assert speed > 0
    assert not list(tmp_path.iterdir())  # the test file is gone


def test_collect_has_the_spec_shape(tmp_path: Path) -> None:
    result = collect(
        SpecsConfig(
            disk_path=str(tmp_path), disk_test_mb=8, net_up=25.5, net_down=118.4, country="CZ"
        ),
        nvml=fake_nvml([("NVIDIA GeForce RTX 3090", 25769803776)]),
    )
    s = result.specs
    assert set(s) == {"mb", "cpu", "cpus", "ram", "disk", "disk_speed", "gpu", "gpuram", "net"}
    cores, threads = (int(x) for x in s["cpus"].split("/"))
    assert 1 <= cores <= threads
    assert s["ram"] > 0 and s["disk_speed"] > 0 and s["disk"].endswith("GB")
    assert (s["gpu"], s["gpuram"]) == ("1x NVIDIA GeForce RTX 3090", 24)
    assert s["net"] == {"up": 25.5, "down": 118.4, "cc": "CZ"}
    assert result.gpu_array == ["NVIDIA GeForce RTX 3090"]
