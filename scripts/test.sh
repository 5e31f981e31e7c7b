#!/usr/bin/env bash
# The whole test suite on a fresh machine: Slurm and munge for tests/slurm (scripts/install_slurm.sh,
# when missing), the virtual environment (scripts/setup.sh, idempotent), then pytest. Arguments go
# to pytest: `bash scripts/test.sh tests/unit -x`. .ci/run is exactly this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install_slurm.sh
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
