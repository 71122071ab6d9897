"""The body of scripts/gpu-partial-check.sh: a per-GPU rental on a real GPU machine sees only
its GPU.

Starts, through the agent's own code (:meth:`Reconciler.launch_spec` and
:class:`DockerRuntime`), the container of a rental that holds one GPU of this machine, runs
``nvidia-smi -L`` in it, prints that next to the host's ``nvidia-smi -L``, and removes the
container. Exit status 0 when the container lists exactly the GPU it holds (matched by UUID), 1
when it lists any other or none, 2 when the check cannot run here (no GPU, no Docker, no NVIDIA
container runtime). Read-only towards the GPUs: ``nvidia-smi -L`` lists, it sets nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from typing import Any

import docker.errors  # type: ignore[import-untyped]

from openclore.agent.reconcile import Reconciler, ReconcileSettings
from openclore.agent.runtime import RuntimeProblem
from openclore.agent.runtime.docker import DockerRuntime
from openclore.protocol import KIND_ORDER, DesiredContainer

LINE = re.compile(r"^GPU (\d+): (.*?) \(UUID: ([^)]+)\)")


def gpus_listed(text: str) -> list[tuple[int, str, str]]:
    """``nvidia-smi -L`` as (index, name, UUID) rows; other lines (MIG devices) are skipped."""
    return [
        (int(m.group(1)), m.group(2), m.group(3))
        for line in text.splitlines()
        if (m := LINE.match(line.strip()))
    ]


def cannot(message: str) -> int:
    print(f"gpu-partial-check: cannot run here: {message}", file=sys.stderr)
    return 2


def host_gpus() -> tuple[str, list[tuple[int, str, str]]] | str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi is not installed: this check needs a machine with NVIDIA GPUs"
    try:
        done = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi -L failed: {exc}"
    listed = gpus_listed(done.stdout)
    if done.returncode != 0 or not listed:
        return f"nvidia-smi -L lists no GPU (exit {done.returncode}): {done.stderr.strip()}"
    return done.stdout, listed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gpu-partial-check.sh", description=__doc__)
    parser.add_argument("--image", default="ubuntu:22.04")
    parser.add_argument("--index", type=int, help="the GPU the rental holds (default: the last)")
    args = parser.parse_args(argv)
    found = host_gpus()
    if isinstance(found, str):
        return cannot(found)
    host_text, host = found
    n = len(host)
    index = host[-1][0] if args.index is None else args.index
    held = [row for row in host if row[0] == index]
    if not held:
        return cannot(f"this machine has no GPU {index} (it has {[r[0] for r in host]})")
    agent_id = "gpu-partial-check-" + uuid.uuid4().hex[:8]
    try:
        runtime = DockerRuntime(agent_id, network=None, isolation="off")
    except RuntimeProblem as exc:
        return cannot(str(exc))
    # the rental the market would send for an order holding GPU `index` of `n`
    desired = DesiredContainer(
        key=f"gpucheck-{agent_id[-8:]}",
        kind=KIND_ORDER,
        image=args.image,
        gpus=[index],
        share=(1, n),
        env={"NVIDIA_DRIVER_CAPABILITIES": "utility"},  # nvidia-smi, whatever the image says
    )
    settings = ReconcileSettings(agent_id=agent_id, gpus=True, cpus=float(os.cpu_count() or 1))
    spec = Reconciler(runtime, settings).launch_spec(desired, [])
    spec = replace(spec, entrypoint=["sleep"], command=["600"])  # kept alive for the check
    print(f"== host: nvidia-smi -L ({n} GPUs)\n{host_text.rstrip()}")
    print(
        f"== a rental holding GPU {index} of {n}, from {args.image}: cpuset {spec.cpuset_cpus}, "
        f"NVIDIA_VISIBLE_DEVICES={spec.env['NVIDIA_VISIBLE_DEVICES']}"
    )
    container_id: str | None = None
    try:
        if not runtime.has_image(args.image):
            runtime.pull(args.image)
        try:
            container_id = runtime.launch(spec).id
        except RuntimeProblem as exc:
            return cannot(
                f"the container did not start ({exc}); is the NVIDIA container toolkit "
                "installed and Docker restarted since (docker run --gpus all works)?"
            )
        return compare(runtime.client.containers.get(container_id), held[0], host)
    except RuntimeProblem as exc:
        return cannot(str(exc))
    finally:
        if container_id is not None:
            try:
                runtime.remove(container_id, 0)
            except RuntimeProblem as exc:
                print(f"WARNING: remove container {container_id[:12]} by hand: {exc}")
        runtime.close()


def compare(container: Any, held: tuple[int, str, str], host: list[tuple[int, str, str]]) -> int:
    try:
        result = container.exec_run(["nvidia-smi", "-L"])
    except docker.errors.DockerException as exc:
        return cannot(f"nvidia-smi could not be run in the container: {exc}")
    text = bytes(result.output).decode("utf-8", "replace")
    print(f"== in the container: nvidia-smi -L (exit {result.exit_code})\n{text.rstrip()}")
    seen = gpus_listed(text)
    if result.exit_code != 0 and not seen:
        return cannot("nvidia-smi did not run in the container (not injected by the runtime?)")
    others = [row for row in seen if row[2] != held[2]]
    by_uuid = {row[2]: row[0] for row in host}
    if others:
        shown = ", ".join(f"host GPU {by_uuid.get(u, '?')} ({u})" for _, _, u in others)
        print(f"FAIL: the rental sees GPUs it does not hold: {shown}")
        return 1
    if [row[2] for row in seen] != [held[2]]:
        print(f"FAIL: the rental does not see its GPU {held[0]} ({held[2]})")
        return 1
    print(f"OK: the rental sees only GPU {held[0]} ({held[1]}, {held[2]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
