"""Real Slurm clusters for the tests of this folder (tests/slurm/cluster.py): one node on this
machine (`slurm_cluster`), and two nodes in network namespaces joined by a private link
(`slurm_two_nodes`, tests/slurm/netns.py).

They need Debian's slurm-wlm and munge, iproute2 and util-linux for the two nodes (`bash scripts/install_slurm.sh` installs them; scripts/test.sh, the README's test command, runs it) and
root (slurmd runs jobs as their user; namespaces need it). Without them the cluster tests are
skipped with the reason, except in CI (env CI set), where a missing cluster is a failure: the launch
path must be tested there.
"""

from __future__ import annotations

import os

import pytest

from tests.slurm import netns
from tests.slurm.cluster import Cluster, unavailable


def _require(reason: str | None) -> None:
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {reason}")
        pytest.skip(reason)


def _running(cluster: Cluster):
    try:
        cluster.start()
        yield cluster
    finally:  # also after a failed start: whatever was started, and the namespaces, go
        try:
            cluster.cancel_all()
        finally:
            cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    _require(unavailable())
    yield from _running(Cluster(tmp_path_factory.mktemp("slurm")))


@pytest.fixture(scope="session")
def slurm_two_nodes(tmp_path_factory):
    _require(unavailable() or netns.unavailable())
    yield from _running(Cluster(tmp_path_factory.mktemp("slurm2"), nodes=2))
