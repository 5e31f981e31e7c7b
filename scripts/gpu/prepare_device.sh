#!/usr/bin/env bash
# Prepare, on THIS (networked, CPU) machine, everything the GPU machine needs but cannot download.
#
# The GPU machine (device tool, kinds nvidia-h100-x1 / nvidia-h200) has Python 3.12, torch 2.11
# (CUDA 13.0), transformers, pytest and ~200 other packages (scripts/gpu/device_packages.txt), no
# network, and receives at most 64 MiB per call (working tree + carried paths). So:
#
#   bash scripts/gpu/prepare_device.sh download [core|vllm|all]   # wheels + their missing deps
#   bash scripts/gpu/prepare_device.sh pack                        # tar + split into 56 MiB parts
#   bash scripts/gpu/prepare_device.sh plan                        # the device calls to make
#   bash scripts/gpu/prepare_device.sh stage BUNDLE INDEX          # put one part in .gpu_carry/
#
# Bundles:
#   core  megatron-core, transformer-engine (+ its CUDA 13 core library wheel, + the PyTorch
#         extension's source: it is sdist-only and is compiled on the GPU machine against its
#         torch), and the project's own dependencies the machine lacks (math-verify, ...).
#   vllm  vLLM for the machine's torch (its wheels pin torch exactly; checked) + missing deps.
#
# Versions (override through the environment):
MCORE_VERSION=${MCORE_VERSION:-0.16.1}    # the version the CPU machines test (pyproject: >=0.16.1,<0.20)
TE_VERSION=${TE_VERSION:-2.10.0}          # cu13 core wheels exist from 2.9; contemporary with megatron-core 0.16
VLLM_VERSION=${VLLM_VERSION:-0.24.0}      # a release built against torch 2.11.0 (the machine's torch)
DEVICE_TORCH=${DEVICE_TORCH:-2.11.0}
PART_MIB=${PART_MIB:-56}                  # + the ~1 MiB working tree stays under the 64 MiB per call
#
# Nothing here installs anything into .venv; pip only downloads. Multi-GB totals are possible
# (vLLM's closure): `download` prints every wheel with its size before anything is packed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}   # has pip and packaging; used to download and read metadata only
WHEELS=$ROOT/.gpu_wheels
BUNDLE=$ROOT/.gpu_bundle
CARRY=$ROOT/.gpu_carry

ignore_local_folders() {
    local exclude=$ROOT/.git/info/exclude
    mkdir -p "$(dirname "$exclude")"
    for folder in /.gpu_wheels/ /.gpu_bundle/ /.gpu_carry/; do
        grep -qxF "$folder" "$exclude" 2>/dev/null || echo "$folder" >>"$exclude"
    done
}

download_te_torch_source() {
    # transformer-engine-torch is published as an sdist only, and generating its metadata needs a
    # CUDA build of torch: pip cannot "download" it here. --no-clean keeps the unpacked source pip
    # fetched before that step fails; it is re-packed and compiled on the GPU machine.
    local dest=$1 tmp
    tmp=$(mktemp -d)
    TMPDIR=$tmp "$PY" -m pip download --quiet --no-clean --no-deps --no-binary=:all: --no-build-isolation \
        -d "$tmp/out" "transformer-engine-torch==$TE_VERSION" >/dev/null 2>&1 || true
    local src
    src=$(find "$tmp" -maxdepth 3 -type f -name setup.py -path '*transformer-engine-torch*' -printf '%h\n' | head -1)
    if [[ -z "$src" ]]; then
        echo "could not fetch the transformer-engine-torch==$TE_VERSION source" >&2
        exit 1
    fi
    tar -czf "$dest/transformer_engine_torch-$TE_VERSION-src.tar.gz" -C "$(dirname "$src")" "$(basename "$src")"
    rm -rf "$tmp"
    echo "transformer-engine-torch $TE_VERSION source: $(du -h "$dest/transformer_engine_torch-$TE_VERSION-src.tar.gz" | cut -f1)"
}

download() {
    local which=${1:-all}
    ignore_local_folders
    if [[ $which == core || $which == all ]]; then
        rm -rf "$WHEELS/core" && mkdir -p "$WHEELS/core"
        # The project's runtime dependencies (pyproject.toml) go in too: those on the machine are skipped.
        "$PY" scripts/gpu/wheel_closure.py --dest "$WHEELS/core" --check-pin "torch==$DEVICE_TORCH" \
            "megatron-core==$MCORE_VERSION" "transformer-engine==$TE_VERSION" "transformer-engine-cu13==$TE_VERSION" \
            "transformers>=4.51" "safetensors>=0.4" numpy tqdm pyyaml "tensorboard>=2.16" "math-verify>=0.7" \
            "pyarrow>=14" "matplotlib>=3.7"
        download_te_torch_source "$WHEELS/core"
    fi
    if [[ $which == vllm || $which == all ]]; then
        rm -rf "$WHEELS/vllm" && mkdir -p "$WHEELS/vllm"
        "$PY" scripts/gpu/wheel_closure.py --dest "$WHEELS/vllm" --check-pin "torch==$DEVICE_TORCH" \
            "vllm==$VLLM_VERSION"
    fi
    du -sh "$WHEELS"/* 2>/dev/null
}

pack() {
    ignore_local_folders
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
    for dir in "$WHEELS"/*/; do
        local name
        name=$(basename "$dir")
        tar -cf "$BUNDLE/$name.tar" -C "$WHEELS" "$name"
        (cd "$BUNDLE" && sha256sum "$name.tar" >"$name.sha256")
        split -b "${PART_MIB}M" -d -a 3 "$BUNDLE/$name.tar" "$BUNDLE/$name.tar.part-"
        rm "$BUNDLE/$name.tar"
        local n
        n=$(ls "$BUNDLE/$name.tar.part-"* | wc -l)
        echo "$n" >"$BUNDLE/$name.parts"
        echo "$name: $n part(s) of <= $PART_MIB MiB ($(cat "$WHEELS/$name"/*.whl "$WHEELS/$name"/*.tar.gz 2>/dev/null | wc -c | awk '{printf "%.0f", $1/2^20}') MiB)"
    done
}

stage() {
    local name=$1 index=$2
    local part
    part=$(printf '%s/%s.tar.part-%03d' "$BUNDLE" "$name" "$index")
    [[ -f $part ]] || { echo "no part $index of bundle $name (run pack first)" >&2; exit 1; }
    ignore_local_folders
    rm -rf "$CARRY" && mkdir -p "$CARRY"
    cp "$part" "$BUNDLE/$name.sha256" "$BUNDLE/$name.parts" "$CARRY/"
    echo "staged $(basename "$part") ($(du -h "$part" | cut -f1)) in .gpu_carry/"
}

plan() {
    [[ -d $BUNDLE ]] || { echo "run download and pack first" >&2; exit 1; }
    cat <<'EOF'
Each device call below must follow the previous one within ~30 s (the machine stays warm 30 s after a
call; /tmp there, where parts accumulate, is lost when it goes back). Here = this machine's shell;
device = the `run` tool with carry=[".gpu_carry"] (command runs in the repo root there).
EOF
    for parts in "$BUNDLE"/*.parts; do
        local name n
        name=$(basename "$parts" .parts)
        n=$(cat "$parts")
        for ((i = 0; i < n; i++)); do
            echo "here:   bash scripts/gpu/prepare_device.sh stage $name $i"
            echo "device: bash scripts/gpu/run_gpu_checks.sh receive        (carry .gpu_carry)"
        done
    done
    cat <<'EOF'
then, on the device (no carry needed; each call < 10 min):
device: bash scripts/gpu/run_gpu_checks.sh install          # installs what arrived; builds TE's torch extension
device: bash scripts/gpu/run_gpu_checks.sh floors tests
device: bash scripts/gpu/run_gpu_checks.sh bench-fp8
device: bash scripts/gpu/run_gpu_checks.sh bench-vocab
device: bash scripts/gpu/run_gpu_checks.sh bench-step       # needs the vllm bundle
EOF
}

case ${1:-} in
    download) download "${2:-all}" ;;
    pack) pack ;;
    stage) stage "${2:?bundle name}" "${3:?part index}" ;;
    plan) plan ;;
    *) sed -n '2,27p' "$0"; exit 2 ;;
esac
