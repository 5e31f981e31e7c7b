#!/usr/bin/env bash
# Installs what tests/slurm needs to start real Slurm clusters (one node here, two nodes in network
# namespaces): Debian/Ubuntu's slurm-wlm and munge, iproute2 (`ip`) and util-linux (`nsenter`,
# `unshare`), quietly and non-interactively, only what is missing (idempotent).
# Needs root or sudo and apt-get. Elsewhere it says why it did nothing and exits 0: the Slurm tests
# are then skipped with that reason (and fail in CI, where CI is set).
# Usage: bash scripts/install_slurm.sh
set -euo pipefail

packages=()
for program in sbatch srun scontrol scancel squeue sinfo slurmctld slurmd; do
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || packages+=(slurm-wlm)
done
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || packages+=(munge)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || packages+=(iproute2)
for program in nsenter unshare; do command -v "$program" >/dev/null 2>&1 || packages+=(util-linux); done
[ ${#packages[@]} -eq 0 ] && exit 0
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

say() { echo "install_slurm: $*" >&2; }
if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${packages[*]} and no apt-get here: install them by hand to run tests/slurm"
    exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        say "missing ${packages[*]}; installing them needs root (or password-less sudo)"
        exit 0
    fi
fi
say "installing ${packages[*]}"
apt_install() { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null; }
apt_install || { "${sudo[@]}" apt-get update -qq >/dev/null && apt_install; }
