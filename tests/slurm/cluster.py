"""A real Slurm cluster in a temporary directory, for the tests (and by hand): one node on this
machine, or two "nodes" in network namespaces (tests/slurm/netns.py) joined by a private link.

Debian's slurm-wlm + munge, run as root: a private munged (own key, socket), slurmctld and one slurmd
per node, all in the foreground under this process (their pids are kept in <dir>/pids.json: the
daemons delete their own pid files on exit), a slurm.conf written under the directory.
- One node (`nodes=1`): the machine's host name on 127.0.0.1, daemons on free ports. Clients find
  the cluster through SLURM_CONF (`Cluster.env`).
- Two nodes (`nodes=2`): `node1` and `node2`, each with its own hostname, address (10.213.7.1/.2)
  and /etc/hosts; slurmctld and the first slurmd run in node1, the second slurmd in node2, all on
  Slurm's usual ports inside their namespaces. munged stays outside: both nodes reach its socket
  by path. Clients (sbatch, squeue, a NeMo-Run submission) must run in node1, the "login node":
  `Cluster.client(...)` prefixes a command with what enters it.
Tear-down (`stop`) ends the daemons (SIGTERM, then SIGKILL), then every process left in the nodes'
namespaces, then the namespaces themselves.

By hand (as root):

    .venv/bin/python -m tests.slurm.cluster up /tmp/slurm [--nodes 2]   # prints how to use it
    .venv/bin/python -m tests.slurm.cluster down /tmp/slurm
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.slurm import netns

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")


def missing_binaries() -> list[str]:
    """Slurm/munge programs not on PATH (or /usr/sbin, where Debian puts the daemons)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [b for b in DAEMONS + CLIENTS if shutil.which(b, path=path) is None]


def _which(binary: str) -> str:
    found = shutil.which(binary, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(binary)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=pstest
SlurmctldHost={ctld_host}({ctld_addr})
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket,cred_expire={cred_expire}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
# a dead node is noticed (and its jobs requeued) within ~20 s, not Slurm's default 5 minutes
SlurmdTimeout=15
MinJobAge=600
InactiveLimit=0
{node_lines}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


@dataclass
class Cluster:
    dir: Path
    nodes: int = 1
    node_names: list[str] = field(default_factory=list)  # set by start()
    _nodes: list[netns.Node] = field(default_factory=list, repr=False)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster (sbatch, squeue, nemo-run's LocalTunnel)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        for name in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if name != "SLURM_CONF":
                del env[name]  # a cluster of our own: never inherit an outer allocation
        return env

    def node(self, name: str) -> netns.Node:
        return next(n for n in self._nodes if n.name == name)

    def client(self, *args: str) -> list[str]:
        """`args` as a command of the cluster's login node (node1 of a namespaced cluster)."""
        return (self._nodes[0].enter() if self._nodes else []) + list(args)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run(self.client(*args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stdout}{out.stderr}")
        return out

    # -- daemons -------------------------------------------------------------------------------

    def _daemon(self, key: str, args: list[str], node: netns.Node | None = None) -> None:
        """Start one daemon in the foreground (its own session: a Ctrl-C of the tests does not
        reach it) and record its pid."""
        with open(self.dir / f"{key}.out", "ab") as out:
            self._procs[key] = subprocess.Popen((node.enter() if node else []) + args, env=self.env,
                                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        self._save_pids()

    def _save_pids(self) -> None:
        state = {"daemons": {k: p.pid for k, p in self._procs.items()},
                 "nodes": [vars(n) for n in self._nodes]}
        (self.dir / "pids.json").write_text(json.dumps(state, indent=1))

    def start_slurmd(self, name: str) -> None:
        """(Re)start the slurmd of node `name` (after `kill_node`)."""
        node = self.node(name) if self._nodes else None
        (self.dir / "spool" / name).mkdir(parents=True, exist_ok=True)
        self._daemon(f"slurmd-{name}", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", name], node)

    def start(self, *, cpus: int | None = None, cred_expire: int = 5, timeout: float = 60) -> "Cluster":
        for sub in ("munge", "state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        cpus = cpus or os.cpu_count() or 1
        try:
            if self.nodes == 1:
                host = socket.gethostname().split(".")[0]
                self.node_names = [host]
                lines = f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=16000 State=UNKNOWN"
                ctld_host, ctld_addr, ports = host, "127.0.0.1", (_free_port(), _free_port())
            else:
                self.node_names = [f"node{i + 1}" for i in range(self.nodes)]
                self._nodes = netns.create(self.dir / "netns", self.node_names)
                lines = "\n".join(f"NodeName={n.name} NodeAddr={n.addr} NodeHostname={n.name} CPUs={cpus} "
                                  "RealMemory=16000 State=UNKNOWN" for n in self._nodes)
                # every node has its own network: Slurm's usual ports are free in each
                ctld_host, ctld_addr, ports = self._nodes[0].name, self._nodes[0].addr, (6817, 6818)
            self.conf.write_text(SLURM_CONF.format(
                dir=self.dir, cred_expire=cred_expire, ctld_host=ctld_host, ctld_addr=ctld_addr,
                ctld_port=ports[0], slurmd_port=ports[1], node_lines=lines, node_names=",".join(self.node_names)))
            m = self.dir / "munge"
            self._daemon("munged", [_which("munged"), "--foreground", "--force", f"--socket={m}/munge.socket",
                                    f"--key-file={key}", f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                                    f"--seed-file={m}/munged.seed"])
            self._wait_for(lambda: (m / "munge.socket").exists(), "munged's socket", timeout)
            controller = self._nodes[0] if self._nodes else None
            self._daemon("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)], controller)
            for name in self.node_names:
                self.start_slurmd(name)
            self.wait_nodes_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = {k: p.returncode for k, p in self._procs.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s (exited: {dead}):\n{self.logs()}")
            time.sleep(0.2)

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def wait_nodes_idle(self, timeout: float = 60) -> None:
        self._wait_for(lambda: all(self.node_states().get(n) in ("idle", "mix", "alloc") for n in self.node_names),
                       f"Slurm nodes {self.node_names}", timeout)

    def logs(self, tail: int = 2000) -> str:
        files = sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in files)

    def kill_node(self, name: str) -> None:
        """A crash of node `name`: SIGKILL to its slurmd, its job steps and everything they started
        (not the controller's node)."""
        if self._nodes and name == self._nodes[0].name:
            raise ValueError(f"{name} runs slurmctld; kill another node")
        node = self.node(name)
        for pid in node.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc = self._procs.pop(f"slurmd-{name}", None)
        if proc is not None:
            proc.wait(timeout=10)
        self._save_pids()
        node.kill_all(grace=0)

    def stop(self) -> None:
        """Stop the daemons (slurmds first, munged last), then everything left in the nodes'
        namespaces and the namespaces. Safe to call twice, and after a failed start."""
        state = _read_json(self.dir / "pids.json")
        pids = {k: p.pid for k, p in self._procs.items()} or state.get("daemons", {})
        order = sorted(pids, key=lambda k: (not k.startswith("slurmd"), k == "munged"))
        for key in order:
            _stop_pid(pids[key], self._procs.get(key))
        self._procs.clear()
        nodes = self._nodes or [netns.Node(**n) for n in state.get("nodes", [])]
        netns.destroy(nodes)
        self._nodes = []
        (self.dir / "pids.json").unlink(missing_ok=True)

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job of this (private) cluster and wait until none is left, so that no
        job step outlives the daemons."""
        if "slurmctld" not in self._procs:
            return  # not started (or already stopped): nothing to ask
        self.run("scancel", "--partition=debug", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", check=False).stdout.strip():
                return
            time.sleep(0.5)

    # -- job helpers -------------------------------------------------------------------------

    def submit(self, *args: str, cwd: str | Path | None = None, env: dict | None = None) -> str:
        out = subprocess.run(self.client("sbatch", "--parsable", *args), env={**self.env, **(env or {})}, cwd=cwd,
                             capture_output=True, text=True, timeout=30)
        if out.returncode:
            raise RuntimeError(f"sbatch failed ({out.returncode}): {out.stderr}")
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once forgotten."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        fields = {}
        for item in out.split():
            if "=" in item:
                key, value = item.split("=", 1)
                fields.setdefault(key, value)
        return fields

    def wait(self, job_id: str, timeout: float, *, poll: float = 1.0) -> dict[str, str]:
        """Wait until the job is finished (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...)."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            time.sleep(poll)
        self.run("scancel", job_id, check=False)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {info}")


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stop_pid(pid: int, proc: subprocess.Popen | None, wait: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL one daemon (reaped when it is our child)."""
    for sig, patience in ((signal.SIGTERM, wait), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if proc is not None:
            try:
                proc.wait(timeout=patience)
                return
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.slurm.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir.resolve(), nodes=args.nodes)
    if args.action == "down":
        cluster.stop()
        return 0
    if args.nodes == 1 and (reason := unavailable()) or args.nodes == 2 and (reason := netns.unavailable()):
        print(f"cannot start the cluster: {reason}", file=sys.stderr)
        return 1
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}")
    if cluster._nodes:
        print(f"# clients run in node1 (pid {cluster._nodes[0].holder} holds its namespaces), e.g.")
        print(f"{' '.join(cluster.client('sinfo'))}")
        print(f"{' '.join(cluster.client('bash'))}    # a shell on the login node")
    return 0


def unavailable() -> str | None:
    """Why a cluster cannot run here (None when it can)."""
    missing = missing_binaries()
    if missing:
        return f"Slurm/munge programs missing: {', '.join(missing)} (bash scripts/install_slurm.sh installs them; scripts/test.sh runs it)"
    if os.geteuid() != 0:
        return "the local Slurm cluster runs slurmd/munged as root"
    return None


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
