#!/usr/bin/env bash
# Regenerate the hash-locked requirement files in containers/locks/ from pyproject.toml
# (`make lock`). Two stacks x two torch builds, all for linux x86_64:
#   hf-cpu       HF stack + dev tools, torch CPU build, Python 3.11 (laptops, CI, `make env`)
#   hf-cuda      HF stack + lm-eval + Liger, torch CUDA build, Python 3.12 (containers/Dockerfile.hf)
#   unsloth-cpu  Unsloth stack,        torch CPU build,  Python 3.11 (on-demand env on a CPU box)
#   unsloth-cuda Unsloth stack,        torch CUDA build, Python 3.12 (containers/Dockerfile.unsloth)
# Existing pins are kept unless pyproject.toml no longer admits them; `make lock UPGRADE=1`
# moves every pin to the newest release allowed.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
OUT=${LOCK_DIR:-containers/locks}
# The CPU torch wheel is not on PyPI: it comes from a find-links folder (here /opt/wheels) or
# https://download.pytorch.org/whl/cpu (set TORCH_CPU_FIND_LINKS to that elsewhere).
TORCH_CPU_FIND_LINKS=${TORCH_CPU_FIND_LINKS:-/opt/wheels}
upgrade=()
[[ -n "${UPGRADE:-}" ]] && upgrade=(--upgrade)

compile() { # name python-version extras(comma-separated) torch-constraint [uv args...]
    local name=$1 python=$2 extras=$3 torch=$4
    shift 4
    local extra_args=()
    for extra in ${extras//,/ }; do extra_args+=(--extra "$extra"); done
    "$UV" pip compile pyproject.toml "${extra_args[@]}" "${upgrade[@]}" \
        --constraint "containers/locks/$torch.constraints" \
        --generate-hashes --python-version "$python" --python-platform x86_64-manylinux_2_28 \
        --no-emit-find-links --no-emit-index-url --custom-compile-command "make lock" \
        --quiet --output-file "$OUT/$name.txt" "$@"
    echo "wrote $OUT/$name.txt"
}

compile hf-cpu 3.11 dev torch-cpu --find-links "$TORCH_CPU_FIND_LINKS"
compile hf-cuda 3.12 lmeval,gpu torch-cuda
unsloth=(--override containers/locks/unsloth.overrides)
# PyPI's torchvision is a CUDA build whose operators fail to load against the CPU torch, and
# Unsloth then refuses to import; text fine-tuning does not use it, so the CPU lock leaves it out.
compile unsloth-cpu 3.11 unsloth torch-cpu "${unsloth[@]}" --no-emit-package torchvision \
    --find-links "$TORCH_CPU_FIND_LINKS"
compile unsloth-cuda 3.12 unsloth torch-cuda "${unsloth[@]}"
