"""CI runs the README's test command, and that command installs Slurm before pytest, so the Slurm
tests run on a fresh machine instead of being skipped."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command_which_installs_slurm_first():
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^    bash scripts/test\.sh$", readme, re.M), "the README's test command changed"
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "exec bash scripts/test.sh"
    steps = [line for line in (REPO / "scripts" / "test.sh").read_text().splitlines()
             if line and not line.startswith(("#", "set ", "cd "))]
    assert steps == ["bash scripts/install_slurm.sh", "bash scripts/setup.sh", 'exec .venv/bin/python -m pytest "$@"']
    installer = (REPO / "scripts" / "install_slurm.sh").read_text()
    assert 'apt-get install -y -qq "${packages[@]}"' in installer
    for package in ("slurm-wlm", "munge", "iproute2", "util-linux"):  # the one- and two-node clusters
        assert f"packages+=({package})" in installer, package
