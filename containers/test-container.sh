#!/usr/bin/env bash
# `make test-container`: build the CPU variant of the HF image with podman and run a tiny
# experiment inside it, end to end, then check its results on the host. Not in the default
# pytest suite (several minutes; needs root for apt-get, debootstrap and rootful podman).
#   1. base: a Debian bookworm minbase rootfs (debootstrap, cached in $TUNEBENCH_CONTAINER_CACHE,
#      default /var/tmp/tunebench-container-test) imported as localhost/tunebench-debian-base
#      (no registry needed); installs podman, runc, debootstrap with apt-get if missing.
#   2. build: containers/build.sh hf --engine podman --variant cpu, recorded in a temporary file
#      (the tracked containers/images.json is left alone).
#   3. run: `tunebench run tests/container/tiny.yaml` in the image as its non-root user, with no
#      network, HF_HUB_OFFLINE=1, WANDB_MODE=offline and TUNEBENCH_CONTAINER_IMAGE=<image>@<digest>;
#      then on the host: one comparison row per run and baseline, every train result ok, and its
#      and eval result's provenance names that image and the lock sha256 the image was built from.
# Prints each phase's time; exits non-zero on any failure. KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cache=${TUNEBENCH_CONTAINER_CACHE:-/var/tmp/tunebench-container-test}
base=localhost/tunebench-debian-base:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
wheels=${TORCH_CPU_FIND_LINKS:-/opt/wheels}
experiment=tests/container/tiny.yaml
python=${PYTHON:-$repo/.venv/bin/python}

fail() {
    echo "test-container: FAIL: $*" >&2
    exit 1
}
timings=()
phase_start=$SECONDS
total_start=$SECONDS
phase_done() {
    timings+=("$(printf '%-12s %5d s' "$1" $((SECONDS - phase_start)))")
    echo "== $1 done in $((SECONDS - phase_start)) s" >&2
    phase_start=$SECONDS
}
report() {
    local code=$?
    if [[ ${#timings[@]} -gt 0 ]]; then
        echo "-- phase times" >&2
        printf '   %s\n' "${timings[@]}" >&2
        printf '   %-12s %5d s\n' total $((SECONDS - total_start)) >&2
    fi
    if [[ -n "${tmp:-}" && -z "${KEEP:-}" ]]; then
        rm -rf "$tmp"
    elif [[ -n "${tmp:-}" ]]; then
        echo "kept $tmp" >&2
    fi
    [[ $code -eq 0 ]] && echo "test-container: OK" >&2
    return $code
}
trap report EXIT

[[ $(id -u) -eq 0 ]] || fail "run as root (apt-get, debootstrap, rootful podman)"
[[ -x "$python" ]] || fail "$python missing: run make env first"
tmp=$(mktemp -d /var/tmp/tunebench-container-test.XXXXXX)

# ------------------------------------------------------------------ 1. tools and base image
missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap >/dev/null
fi
# runc and explicit ulimits: crun fails on hosts with hybrid cgroups and tight rlimits.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/containers/podman-containers.conf}
podman_run=(podman run --rm --runtime runc
    --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

if ! podman image exists "$base"; then
    rootfs=$cache/bookworm-minbase
    if [[ ! -d "$rootfs" ]]; then
        mkdir -p "$cache"
        rm -rf "$rootfs.partial"
        echo "== debootstrap bookworm minbase into $rootfs" >&2
        debootstrap --variant=minbase bookworm "$rootfs.partial" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
            fail "debootstrap failed, see $cache/debootstrap.log"
        mv "$rootfs.partial" "$rootfs"
    fi
    # An imported rootfs has no config: give it the PATH every real base image sets.
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
fi
"${podman_run[@]}" --network none "$base" true || fail "cannot run a container from $base"
phase_done "base image"

# ------------------------------------------------------------------ 2. build
build_args=(--engine podman --variant cpu --base "$base" --record "$tmp/images.json")
shopt -s nullglob
torch_wheels=("$wheels"/torch-*+cpu-*.whl)
shopt -u nullglob
if [[ ${#torch_wheels[@]} -gt 0 ]]; then
    mkdir -p containers/wheels
    cp -u "${torch_wheels[@]}" containers/wheels/
else
    build_args+=(--find-links https://download.pytorch.org/whl/cpu)
fi
# The host's CA bundle (it holds any TLS-intercepting proxy's CA); a build secret, not a layer.
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && build_args+=(--ca-cert /etc/ssl/certs/ca-certificates.crt)
containers/build.sh hf "${build_args[@]}" || fail "build failed"
field() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["hf"]["cpu"][sys.argv[2]] or "")' \
        "$tmp/images.json" "$1"
}
image=$(field image)
repository=$(field repository)
digest=$(field digest)
lock_sha256=$(field lock_sha256)
[[ -n "$digest" ]] || fail "no digest recorded for $image"
pinned=$repository@$digest
label=$(podman image inspect --format '{{index .Labels "org.tunebench.lock-sha256"}}' "$image")
[[ "$label" == "$lock_sha256" ]] || fail "label lock-sha256 $label != $lock_sha256"
user=$(podman image inspect --format '{{.Config.User}}' "$image")
[[ -n "$user" && "$user" != root && "${user%%:*}" != 0 ]] || fail "image runs as root ($user)"
phase_done "build"

# ------------------------------------------------------------------ 3. run inside the image
work=$tmp/work
mkdir -p "$work"
cp "$experiment" "$work/"
chown -R 1000:1000 "$work" # the image's user; no --user 0 needed
"${podman_run[@]}" --network none \
    -e HF_HUB_OFFLINE=1 -e WANDB_MODE=offline -e TUNEBENCH_CONTAINER_IMAGE="$pinned" \
    -v "$work:/work" "$image" \
    tunebench run "$(basename "$experiment")" >"$tmp/run.log" 2>&1 || {
    tail -n 40 "$tmp/run.log" >&2
    fail "tunebench run failed in the container (log: $tmp/run.log)"
}
tail -n 8 "$tmp/run.log" >&2
phase_done "run"

# ------------------------------------------------------------------ 4. check on the host
"$python" - "$repo/$experiment" "$work" "$pinned" "$lock_sha256" <<'EOF' || fail "result checks"
import csv
import json
import sys
from pathlib import Path

from tunebench.experiment import load_experiment
from tunebench.layout import EVAL_RESULT, TRAIN_RESULT, results_root
from tunebench.matrix import baselines, expand

experiment, work, image, lock_sha256 = sys.argv[1:]
exp = load_experiment(experiment)
root = Path(work) / results_root(exp.name)
problems = []
table = root / "comparison.csv"
rows = list(csv.DictReader(table.open())) if table.is_file() else []
expected = len(expand(exp)) + len(baselines(exp))
if len(rows) != expected:
    problems.append(f"{table}: {len(rows)} rows, expected {expected} (runs + baselines)")
problems += [f"comparison row {r['run_id']}: status {r['status']}" for r in rows if r["status"] != "ok"]
for run in expand(exp):
    path = root / TRAIN_RESULT.format(run_id=run.run_id)
    if not path.is_file():
        problems.append(f"{path}: missing")
        continue
    result = json.loads(path.read_text())
    if result.get("status") != "ok":
        problems.append(f"{run.run_id}: status {result.get('status')} ({result.get('reason')})")
    # Train and eval results: the image passed in, and the lock the image was installed from.
    for record in (path, root / EVAL_RESULT.format(run_id=run.run_id)):
        provenance = json.loads(record.read_text()).get("provenance", {}) if record.is_file() else {}
        where = record.relative_to(root)
        if provenance.get("container_image") != image:
            problems.append(f"{where}: container_image {provenance.get('container_image')!r}")
        environment = provenance.get("environment") or {}
        if environment.get("lock_sha256") != lock_sha256:
            problems.append(f"{where}: environment.lock_sha256 {environment.get('lock_sha256')!r}")
        if environment.get("drift"):
            problems.append(f"{where}: environment drift {environment['drift']}")
print(f"{len(rows)} comparison rows, {len(expand(exp))} runs checked; image {image}")
for problem in problems:
    print("  " + problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
phase_done "check"
