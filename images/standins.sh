#!/usr/bin/env bash
# Stand-in base images, so that images/*/Dockerfile build unchanged where no registry is reachable.
#
#   images/standins.sh conf    write the private containers.conf; print its path (for CONTAINERS_CONF)
#   images/standins.sh check   exit 0 when podman can run a container here, else say why and exit 1
#   images/standins.sh build   make the two stand-in bases (once; later calls reuse them)
#   images/standins.sh clean   remove the stand-in bases and the root filesystem
#
# `build` makes, from a `debootstrap --variant=minbase bookworm` root filesystem (whose Python is
# 3.11, python:3.11-slim's version):
#   docker.io/library/python:3.11-slim   the runtime Dockerfile's FROM: a venv at /usr/local, so that
#                                        `python` and `pip` are what python:3.11-slim has there
#   localhost/kftune-standin/pytorch:2.13.0-cpu
#                                        the trainer's BASE_IMAGE: CPU torch 2.13.0 installed into
#                                        the system (EXTERNALLY-MANAGED) Python, as in the
#                                        pytorch/pytorch 2.13 images
# Both carry this machine's CA bundle and pip settings (HTTPS from inside a build goes through the
# same interception as here); builds bind-mount the local wheel folder, which holds CPU torch.
# The tier in tests/images/ and `.ci/run` use this script; see README.md, "Images".
set -euo pipefail

STATE=${KFTUNE_IMAGES_STATE:-/var/tmp/kftune-images}
MIRROR=${KFTUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
WHEELS=${KFTUNE_WHEELS:-/opt/wheels}
ROOTFS_IMAGE=localhost/kftune-standin/bookworm:minbase
PYTHON_IMAGE=docker.io/library/python:3.11-slim
TORCH_IMAGE=localhost/kftune-standin/pytorch:2.13.0-cpu
export CONTAINERS_CONF=$STATE/containers.conf

conf() {
    mkdir -p "$STATE"
    # crun fails here ("cgroups in hybrid mode not supported"): runc and cgroupfs. Default ulimits
    # above the machine's hard limits make every container fail to start.
    local nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [[ $nofile == unlimited ]] && nofile=1048576
    [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
    cat >"$CONTAINERS_CONF.partial" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    mv "$CONTAINERS_CONF.partial" "$CONTAINERS_CONF"
    echo "$CONTAINERS_CONF"
}

check() {
    local missing=()
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        echo "podman cannot run here: ${missing[*]} not installed (apt-get install podman runc debootstrap)"
        return 1
    fi
    conf >/dev/null
    # The smallest container there is: /bin/true and its libraries, imported on the spot.
    local scratch lib
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' RETURN
    mkdir -p "$scratch/bin"
    cp /bin/true "$scratch/bin/true"
    for lib in $(ldd /bin/true | grep -o '/[^ ]*'); do
        mkdir -p "$scratch$(dirname "$lib")"
        cp "$lib" "$scratch$lib"
    done
    local output
    if ! output=$(tar -C "$scratch" -c . | podman import -q - localhost/kftune-standin/check:1 2>&1 &&
        podman run --rm --network host localhost/kftune-standin/check:1 /bin/true 2>&1); then
        echo "podman cannot run a container here: ${output##*$'\n'}"
        podman rmi -f localhost/kftune-standin/check:1 >/dev/null 2>&1 || true
        return 1
    fi
    podman rmi -f localhost/kftune-standin/check:1 >/dev/null 2>&1 || true
    echo "podman can run containers here ($(podman --version), runc, cgroupfs)"
}

exists() { podman image exists "$1"; }

rootfs() {
    exists "$ROOTFS_IMAGE" && return 0
    local root=$STATE/rootfs
    rm -rf "$root"
    # python3-pip and python-is-python3: `pip` and `python` of the system Python (trainer base);
    # python3-venv: the venv that stands in for python:3.11-slim's /usr/local.
    debootstrap --variant=minbase \
        --include=ca-certificates,python3,python3-venv,python3-pip,python-is-python3 \
        bookworm "$root" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 ||
        { tail -20 "$STATE/debootstrap.log"; return 1; }
    # This machine's CA bundle (with its interception CA) and pip settings, as the host uses them.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    {
        echo "[global]"
        echo "cert = /etc/ssl/certs/ca-certificates.crt"
        [[ -d $WHEELS ]] && echo "find-links = $WHEELS"
        [[ -f /etc/xdg/pip/constraints.txt ]] && echo "constraint = /etc/pip-constraints.txt"
    } >"$root/etc/pip.conf"
    [[ -f /etc/xdg/pip/constraints.txt ]] && cp /etc/xdg/pip/constraints.txt "$root/etc/pip-constraints.txt"
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    tar -C "$root" -c . | podman import -q - "$ROOTFS_IMAGE" >/dev/null
    rm -rf "$root"
}

build() {
    conf >/dev/null
    rootfs
    local mounts=()
    [[ -d $WHEELS ]] && mounts=(-v "$WHEELS:$WHEELS:ro")
    if ! exists "$PYTHON_IMAGE"; then
        podman build -q --pull=never --network host -t "$PYTHON_IMAGE" -f - "$STATE" <<EOF >/dev/null
FROM $ROOTFS_IMAGE
ENV LANG=C.UTF-8
RUN python3 -m venv /usr/local && /usr/local/bin/pip --version
EOF
    fi
    if ! exists "$TORCH_IMAGE"; then
        podman build -q --pull=never --network host "${mounts[@]}" -t "$TORCH_IMAGE" -f - "$STATE" <<EOF >/dev/null
FROM $ROOTFS_IMAGE
ENV LANG=C.UTF-8
RUN pip install --break-system-packages --no-cache-dir torch==2.13.0 \
    && python -c "import torch; print(torch.__version__)"
EOF
    fi
    echo "stand-in bases: $PYTHON_IMAGE, $TORCH_IMAGE"
}

clean() {
    podman rmi -f "$PYTHON_IMAGE" "$TORCH_IMAGE" "$ROOTFS_IMAGE" >/dev/null 2>&1 || true
    rm -rf "$STATE/rootfs"
}

case ${1:-} in
conf | check | build | clean) "$1" ;;
*)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
