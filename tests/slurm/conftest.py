"""A real one-node Slurm cluster for the tests of this folder (tests/slurm/cluster.py).

Needs Debian's slurm-wlm and munge (`.ci/run` installs them) and root (slurmd runs jobs as their
user). Without them the cluster tests are skipped with the reason, except in CI (env CI set), where
a missing cluster is a failure: the launch path must be tested there.
"""

from __future__ import annotations

import os

import pytest

from tests.slurm.cluster import Cluster, missing_binaries


def _unavailable() -> str | None:
    missing = missing_binaries()
    if missing:
        return (f"Slurm/munge programs missing: {', '.join(missing)} "
                "(bash scripts/install_slurm.sh installs them; scripts/test.sh runs it)")
    if os.geteuid() != 0:
        return "the local Slurm cluster runs slurmd/munged as root; run the slurm tests as root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {reason}")
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.cancel_all()
        cluster.stop()
