#!/usr/bin/env bash
# Build a tunebench image from its hash-locked lock file and record it.
#
#   containers/build.sh <hf|unsloth> [--engine docker|podman|apptainer] [--variant cuda|cpu]
#       [--base IMAGE] [--record FILE] [--tag NAME[:TAG]] [--ca-cert FILE] [--find-links URL]
#       [--no-build] [-- EXTRA BUILD ARGUMENTS FOR THE ENGINE]
#
# Tag: tunebench-<stack>:lock-<first 12 hex of the lock's sha256> (cpu variant:
# tunebench-<stack>-cpu:...); --tag replaces the name (e.g. a registry path) or name:tag.
# The record file (default containers/images.json) gets, under <stack>.<variant>: image
# (name:tag), repository, tag, digest, image_id, lock, lock_sha256, base_image, engine, built_at,
# git_commit, git_dirty (apptainer also: sif). --no-build writes the entry with null digest (a lock changed on a
# machine that cannot build); tests/test_containers.py fails when an entry's lock_sha256 is stale.
# Variants: cuda = containers/locks/<stack>-cuda.txt on the Dockerfile's nvidia/cuda base;
# cpu = <stack>-cpu.txt (Python 3.11) on debian:bookworm-slim unless --base; the CPU torch wheel
# comes from containers/wheels/ (git-ignored) or --find-links https://download.pytorch.org/whl/cpu.
# --ca-cert: CA bundle for a TLS-intercepting proxy, given to pip as a build secret (docker,
# podman), never stored in the image. Engine default: the first of docker, podman, apptainer found.
# podman without CONTAINERS_CONF: a temporary one selects runc and sets ulimits when runc exists
# (crun fails on some hosts with hybrid cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '3,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "build.sh: $*" >&2
    exit 1
}

[[ $# -ge 1 ]] || usage
stack=$1
shift
case "$stack" in
hf | unsloth) ;;
-h | --help) usage ;;
*) die "unknown stack '$stack' (hf or unsloth)" ;;
esac

engine="" variant=cuda base="" record=containers/images.json name_arg="" ca_cert="" find_links=""
build=1
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --engine) engine=${2:?--engine needs a value} && shift ;;
    --variant) variant=${2:?--variant needs a value} && shift ;;
    --base) base=${2:?--base needs a value} && shift ;;
    --record) record=${2:?--record needs a value} && shift ;;
    --tag) name_arg=${2:?--tag needs a value} && shift ;;
    --ca-cert) ca_cert=${2:?--ca-cert needs a value} && shift ;;
    --find-links) find_links=${2:?--find-links needs a value} && shift ;;
    --no-build) build=0 ;;
    --) shift && extra=("$@") && break ;;
    -h | --help) usage ;;
    *) die "unknown option '$1'" ;;
    esac
    shift
done

case "$variant" in
cuda | cpu) ;;
*) die "unknown variant '$variant' (cuda or cpu)" ;;
esac
if [[ -z "$engine" && $build -eq 1 ]]; then
    for candidate in docker podman apptainer; do
        if command -v "$candidate" >/dev/null; then
            engine=$candidate
            break
        fi
    done
    [[ -n "$engine" ]] || die "no container engine found (docker, podman or apptainer)"
fi
case "$engine" in
"" | docker | podman | apptainer) ;;
*) die "unknown engine '$engine' (docker, podman or apptainer)" ;;
esac
[[ -z "$ca_cert" || -f "$ca_cert" ]] || die "--ca-cert $ca_cert: no such file"

dockerfile=containers/Dockerfile.$stack
deffile=containers/$stack.def
lock=containers/locks/$stack-$variant.txt
[[ -f "$lock" ]] || die "$lock: no such lock file (make lock)"
lock_sha256=$(sha256sum "$lock" | cut -c1-64)

name=tunebench-$stack
[[ "$variant" == cpu ]] && name=$name-cpu
tag=lock-${lock_sha256:0:12}
if [[ -n "$name_arg" ]]; then
    if [[ "${name_arg##*/}" == *:* ]]; then
        name=${name_arg%:*}
        tag=${name_arg##*:}
    else
        name=$name_arg
    fi
fi
ref=$name:$tag

if [[ -z "$base" ]]; then
    if [[ "$variant" == cpu ]]; then
        base=debian:bookworm-slim # Python 3.11, as the cpu locks
    else
        base=$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile")
    fi
fi

git_commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git_dirty=null
if [[ "$git_commit" != unknown ]]; then
    git_dirty=false
    [[ -z "$(git status --porcelain --untracked-files=no)" ]] || git_dirty=true
fi
# Never let credentials in a remote URL reach a label.
source_url=$(git remote get-url origin 2>/dev/null | sed -E 's#://[^/@]+@#://#' || true)
source_url=${source_url:-unknown}

build_args=(
    BASE_IMAGE="$base"
    LOCK="$lock"
    LOCK_SHA256="$lock_sha256"
    REVISION="$git_commit"
    SOURCE="$source_url"
    IMAGE_REF="$ref"
)
[[ -n "$find_links" ]] && build_args+=(FIND_LINKS="$find_links")
[[ "$stack" == unsloth && "$variant" == cpu ]] && build_args+=(UNSLOTH_DISABLE_CPU_FALLBACK=0)

digest=null image_id=null sif=null built_at=null
started=$SECONDS
if [[ $build -eq 1 ]]; then
    mkdir -p containers/wheels # the optional find-links folder is a bind mount: it must exist
    echo "building $ref ($engine, $lock sha256 ${lock_sha256:0:12}, base $base)" >&2
    case "$engine" in
    docker | podman)
        args=(build --file "$dockerfile" --tag "$ref")
        for arg in "${build_args[@]}"; do args+=(--build-arg "$arg"); done
        [[ -n "$ca_cert" ]] && args+=(--secret "id=ca_cert,src=$ca_cert")
        if [[ "$engine" == podman ]]; then
            if [[ -z "${CONTAINERS_CONF:-}" ]] && command -v runc >/dev/null; then
                export CONTAINERS_CONF=$PWD/containers/podman-containers.conf
            fi
            args+=(--layers --format docker) # docker format keeps SHELL (OCI drops it)
        else
            export DOCKER_BUILDKIT=1
        fi
        "$engine" "${args[@]}" "${extra[@]}" .
        image_id=$("$engine" image inspect --format '{{.Id}}' "$ref")
        [[ "$image_id" == sha256:* ]] || image_id=sha256:$image_id
        if [[ "$engine" == podman ]]; then
            digest=$(podman image inspect --format '{{.Digest}}' "$ref")
        else # a registry digest exists only once pushed
            digest=$(docker image inspect --format '{{join .RepoDigests " "}}' "$ref" | tr ' ' '\n' |
                sed -n 's/^.*@//p' | head -n 1)
        fi
        ;;
    apptainer)
        sif=${TUNEBENCH_SIF_DIR:-containers/sif}/${name//\//_}_$tag.sif
        mkdir -p "$(dirname "$sif")"
        args=(build --force)
        for arg in "${build_args[@]}"; do args+=(--build-arg "$arg"); done
        apptainer "${args[@]}" "${extra[@]}" "$sif" "$deffile"
        digest=sha256:$(sha256sum "$sif" | cut -c1-64)
        image_id=$digest
        ;;
    esac
    built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    echo "built $ref in $((SECONDS - started)) s: digest ${digest:-none}" >&2
fi

# JSON edited with python3 (jq is not everywhere); values come in through the environment.
B_BUILT=$build B_IMAGE=$name B_TAG=$tag B_REF=$ref B_DIGEST=$digest B_IMAGE_ID=$image_id \
    B_LOCK=$lock B_LOCK_SHA256=$lock_sha256 B_BASE=$base B_ENGINE=$engine B_BUILT_AT=$built_at \
    B_GIT_COMMIT=$git_commit B_GIT_DIRTY=$git_dirty B_SIF=$sif \
    python3 - "$record" "$stack" "$variant" <<'EOF'
import json
import os
import sys
from pathlib import Path

record, stack, variant = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
env = os.environ
built = env["B_BUILT"] == "1"


def opt(key):
    value = env.get(key, "")
    return None if value in ("", "null") or not built else value


entry = {
    "image": env["B_REF"],
    "repository": env["B_IMAGE"],
    "tag": env["B_TAG"],
    "digest": opt("B_DIGEST"),
    "image_id": opt("B_IMAGE_ID"),
    "lock": env["B_LOCK"],
    "lock_sha256": env["B_LOCK_SHA256"],
    "base_image": env["B_BASE"],
    "engine": opt("B_ENGINE"),
    "built_at": opt("B_BUILT_AT"),
    "git_commit": opt("B_GIT_COMMIT"),
    "git_dirty": {"true": True, "false": False}.get(env["B_GIT_DIRTY"]) if built else None,
}
if opt("B_SIF"):
    entry["sif"] = env["B_SIF"]
if not built:
    entry["note"] = "not built yet: build with containers/build.sh on a machine with a registry/GPU"
data = json.loads(record.read_text()) if record.is_file() and record.stat().st_size else {}
data.setdefault(stack, {})[variant] = entry
tmp = record.with_name(record.name + ".tmp")
tmp.write_text(json.dumps(data, indent=2) + "\n")
os.replace(tmp, record)
print(f"recorded {stack}.{variant}: {entry['image']} digest {entry['digest']} in {record}")
EOF
