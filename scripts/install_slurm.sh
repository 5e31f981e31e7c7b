#!/usr/bin/env bash
# Installs what tests/slurm needs to start a real one-node Slurm cluster: Debian/Ubuntu's
# slurm-wlm and munge, quietly and non-interactively, only when a program is missing (idempotent).
# Needs root or sudo and apt-get. Elsewhere it says why it did nothing and exits 0: the Slurm tests
# are then skipped with that reason (and fail in CI, where CI is set).
# Usage: bash scripts/install_slurm.sh
set -euo pipefail

missing=()
for program in sbatch srun scontrol scancel squeue sinfo slurmctld slurmd munged; do
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("$program")
done
[ ${#missing[@]} -eq 0 ] && exit 0

say() { echo "install_slurm: $*" >&2; }
if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]} and no apt-get here: install Slurm and munge by hand to run tests/slurm"
    exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        say "missing ${missing[*]}; installing slurm-wlm and munge needs root (or password-less sudo)"
        exit 0
    fi
fi
say "installing slurm-wlm and munge (missing: ${missing[*]})"
apt_install() { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; }
apt_install || { "${sudo[@]}" apt-get update -qq >/dev/null && apt_install; }
