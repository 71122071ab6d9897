#!/usr/bin/env bash
# Make a Docker engine available for the host-agent tests (tests/agent/test_agent_*.py), idempotently:
#   - install docker.io and busybox-static with apt (apt-get update only when a package is missing),
#   - remove a stale /var/run/docker.pid, start dockerd in the background unless one answers,
#   - wait until `docker info` works,
#   - build the tiny local test image openclore-test/busybox:latest (docker import of a busybox
#     rootfs made from busybox-static) when it is missing.
# Needs root. Safe to run again and again (CI calls it before the tests).
set -euo pipefail

IMAGE=${OPENCLORE_TEST_IMAGE:-openclore-test/busybox:latest}
LOG=${DOCKERD_LOG:-/var/log/openclore-dockerd.log}
WAIT=${DOCKERD_WAIT:-60}

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y --no-install-recommends "${need[@]}"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${need[@]}"
  fi
fi

if ! $SUDO docker info >/dev/null 2>&1; then
  if [ -f /var/run/docker.pid ]; then
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "removing stale /var/run/docker.pid"
      $SUDO rm -f /var/run/docker.pid
    fi
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    echo "starting dockerd (log: $LOG)"
    $SUDO sh -c "nohup setsid dockerd >>'$LOG' 2>&1 </dev/null &"
  fi
  for _ in $(seq 1 "$((WAIT * 5))"); do
    if $SUDO docker info >/dev/null 2>&1; then
      break
    fi
    sleep 0.2
  done
  if ! $SUDO docker info >/dev/null 2>&1; then
    echo "dockerd did not come up within ${WAIT}s; last lines of $LOG:" >&2
    $SUDO tail -n 30 "$LOG" >&2 || true
    exit 1
  fi
fi
echo "docker engine: $($SUDO docker version --format '{{.Server.Version}}')"

# bump when the image's content changes: an older local image is rebuilt
IMAGE_VERSION=2
have=$($SUDO docker image inspect --format '{{ index .Config.Labels "openclore.test-image" }}' "$IMAGE" 2>/dev/null || true)
if [ "$have" != "$IMAGE_VERSION" ]; then
  BUSYBOX=$(command -v busybox || echo /bin/busybox)
  ROOTFS=$(mktemp -d)
  trap 'rm -rf "$ROOTFS"' EXIT
  mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,www,proc,sys,dev,var/run}
  chmod 1777 "$ROOTFS/tmp"
  cp "$BUSYBOX" "$ROOTFS/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOTFS/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$ROOTFS/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
  echo "openclore test image" >"$ROOTFS/www/index.html"
  # like a GPU-cloud image, its default process runs until stopped (and stops on SIGTERM)
  printf '#!/bin/sh\ntrap "exit 0" TERM INT\nwhile :; do sleep 3600 & wait $!; done\n' >"$ROOTFS/bin/idle"
  chmod 755 "$ROOTFS/bin/idle"
  tar -C "$ROOTFS" -c . | $SUDO docker import \
    -c 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
    -c "LABEL openclore.test-image=$IMAGE_VERSION" \
    -c 'CMD ["/bin/idle"]' \
    - "$IMAGE" >/dev/null
  echo "built $IMAGE"
fi
echo "docker ready; test image $IMAGE present"
