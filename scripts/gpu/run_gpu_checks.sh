#!/usr/bin/env bash
# The GPU side: receive the carried bundles, install them, run the gpu test group and the GPU
# benchmarks. Runs ON THE GPU MACHINE (device tool), in the repository root, as
#
#   bash scripts/gpu/run_gpu_checks.sh STEP [STEP ...]
#
# Steps (in the order they are meant to run; see docs/gpu.md and prepare_device.sh plan):
#   receive      move the part in .gpu_carry/ into /tmp/gpu_bundle; unpack a bundle once complete
#   install      install every unpacked bundle into /tmp/site (pip --target, no index, no deps) and
#                build Transformer Engine's PyTorch extension from source against this torch
#   status       what is installed (versions of torch, megatron-core, TE, vLLM; the GPU)
#   floors       the two ceilings of METHOD.md: device-to-device copy bandwidth, bf16 matmul rate
#   tests        python -m pytest -m gpu tests/gpu
#   bench-fp8    bench/gpu/bench_fp8_training.py      (FP8 vs BF16 training step, ~1B model)
#   bench-vocab  bench/gpu/bench_vocab_parallel_cuda.py (16k tokens x 152k vocab)
#   bench-step   bench/gpu/bench_policy_split_step.py (one Policy Split step, colocated vLLM)
# Logs and JSON go to $OUT (the folder the device tool brings back), else ./gpu_out.
# Everything installed lives in /tmp and is lost when the machine goes back.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PY:-python3}
SITE=/tmp/site
STAGE=/tmp/gpu_bundle
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$SITE" "$STAGE" "$OUT"
export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

receive() {
    shopt -s nullglob
    local moved=0
    for part in .gpu_carry/*.tar.part-*; do
        local name
        name=$(basename "$part" | sed 's/\.tar\.part-.*//')
        mv "$part" "$STAGE/"
        cp .gpu_carry/"$name".sha256 .gpu_carry/"$name".parts "$STAGE/"
        moved=1
        local have want
        have=$(ls "$STAGE/$name".tar.part-* | wc -l)
        want=$(cat "$STAGE/$name.parts")
        echo "bundle $name: $have of $want part(s) here"
        if [[ $have == "$want" ]]; then
            cat "$STAGE/$name".tar.part-* >"$STAGE/$name.tar"
            if (cd "$STAGE" && sha256sum -c "$name.sha256"); then
                tar -xf "$STAGE/$name.tar" -C "$STAGE" && rm -f "$STAGE/$name.tar" "$STAGE/$name".tar.part-*
                echo "bundle $name complete: $(ls "$STAGE/$name" | wc -l) files in $STAGE/$name"
            else
                echo "bundle $name: checksum mismatch, parts dropped; send them again" >&2
                rm -f "$STAGE/$name.tar" "$STAGE/$name".tar.part-*
                return 1
            fi
        fi
    done
    [[ $moved == 1 ]] || { echo "nothing in .gpu_carry/ (name it in the call's carry)" >&2; return 1; }
}

install() {
    shopt -s nullglob
    local wheels=("$STAGE"/*/*.whl)
    if ((${#wheels[@]})); then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${wheels[@]}" 2>&1 | tee "$OUT/pip_install.log" | tail -5
    fi
    for src in "$STAGE"/*/transformer_engine_torch-*-src.tar.gz; do
        if "$PY" -c "import transformer_engine_torch" 2>/dev/null; then
            echo "Transformer Engine's PyTorch extension is already built"
            continue
        fi
        local build=/tmp/te_torch_build
        rm -rf "$build" && mkdir -p "$build" && tar -xzf "$src" -C "$build"
        local dir
        dir=$(find "$build" -maxdepth 2 -name setup.py -printf '%h\n' | head -1)
        echo "building Transformer Engine's PyTorch extension ($(nproc) jobs; log: $OUT/te_torch_build.log)"
        local start=$SECONDS
        (cd "$dir" && MAX_JOBS=$(nproc) NVTE_FRAMEWORK=pytorch "$PY" -m pip install -v --no-index --no-deps \
            --no-build-isolation --no-cache-dir --target "$SITE" . >"$OUT/te_torch_build.log" 2>&1)
        local rc=$?
        echo "TE torch extension build: rc=$rc in $((SECONDS - start)) s"
        tail -20 "$OUT/te_torch_build.log"
    done
    status
}

status() {
    "$PY" - <<'EOF'
import importlib, torch
print(f"torch {torch.__version__} CUDA {torch.version.cuda}; GPU: "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'} "
      f"cc {torch.cuda.get_device_capability() if torch.cuda.is_available() else '-'}")
for name in ("megatron.core", "transformer_engine", "transformer_engine.pytorch", "vllm", "math_verify"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'ok')}")
    except Exception as err:  # noqa: BLE001
        print(f"{name}: NOT importable ({type(err).__name__}: {str(err)[:200]})")
try:
    from policy_split_megatron.model.precision import PrecisionConfig, UnsupportedPrecisionError, check_hardware_support
    for recipe in ("tensorwise", "delayed", "blockwise", "mxfp8"):
        try:
            print(f"fp8 {recipe}: {check_hardware_support(PrecisionConfig(fp8='hybrid', fp8_recipe=recipe)).describe()}")
        except UnsupportedPrecisionError as err:
            print(f"fp8 {recipe}: refused: {err}")
except Exception as err:  # noqa: BLE001
    print(f"precision check failed: {err}")
EOF
}

floors() {
    "$PY" - <<'EOF' 2>&1 | tee "$OUT/floors.log"
import torch
assert torch.cuda.is_available()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
def median_ms(fn, n=20):
    fn(); torch.cuda.synchronize(); times = []
    for _ in range(n):
        start.record(); fn(); end.record(); end.synchronize(); times.append(start.elapsed_time(end))
    return sorted(times)[n // 2]
src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").random_(0, 255); dst = torch.empty_like(src)
ms = median_ms(lambda: dst.copy_(src))
print(f"device copy 2 GiB: {ms:.2f} ms = {2 * src.numel() / ms / 1e9:.2f} TB/s (read + write)")
del src, dst
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
ms = median_ms(lambda: a @ b)
print(f"bf16 8192^3 matmul: {ms:.2f} ms = {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s")
try:
    import transformer_engine.pytorch as te  # noqa: F401
    from transformer_engine.common import recipe
    lin = te.Linear(8192, 8192, bias=False, params_dtype=torch.bfloat16, device="cuda")
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ms = median_ms(lambda: lin(x))
        print(f"TE bf16 linear 8192^3: {ms:.2f} ms = {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s")
        for name, rec in (("tensorwise", recipe.Float8CurrentScaling()), ("delayed", recipe.DelayedScaling())):
            def run():
                with te.fp8_autocast(enabled=True, fp8_recipe=rec):
                    lin(x)
            ms = median_ms(run)
            print(f"TE fp8 {name} linear 8192^3: {ms:.2f} ms = {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s")
except Exception as err:  # noqa: BLE001
    print(f"TE linear rates skipped: {type(err).__name__}: {err}")
EOF
}

run_tests() {
    "$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider -s 2>&1 | tee "$OUT/gpu_tests.log" | tail -60
}

bench() {
    local script=$1 name=$2
    shift 2
    "$PY" "bench/gpu/$script" --json "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.log" | tail -40
}

[[ $# -gt 0 ]] || { sed -n '2,20p' "$0"; exit 2; }
rc=0
for step in "$@"; do
    echo "=== $step"
    case $step in
        receive) receive || rc=1 ;;
        install) install || rc=1 ;;
        status) status || rc=1 ;;
        floors) floors || rc=1 ;;
        tests) run_tests || rc=1 ;;
        bench-fp8) bench bench_fp8_training.py bench_fp8 || rc=1 ;;
        bench-vocab) bench bench_vocab_parallel_cuda.py bench_vocab || rc=1 ;;
        bench-step) bench bench_policy_split_step.py bench_step || rc=1 ;;
        *) echo "unknown step $step" >&2; rc=2 ;;
    esac
done
exit $rc
