"""A real one-node Slurm cluster in a temporary directory, for the tests (and by hand).

Debian's slurm-wlm + munge, run as root: a private munged (own key, socket, pid file), slurmctld and
slurmd on free ports, a slurm.conf written under the directory. Clients find it through SLURM_CONF
(`Cluster.env`). Tear-down stops each daemon by the pid in its pid file.

By hand (as root):

    .venv/bin/python -m tests.slurm.cluster up /tmp/slurm     # prints `export SLURM_CONF=...`
    .venv/bin/python -m tests.slurm.cluster down /tmp/slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket,cred_expire={cred_expire}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


@dataclass
class Cluster:
    dir: Path

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

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stdout}{out.stderr}")
        return out

    def start(self, *, cpus: int | None = None, cred_expire: int = 5, timeout: float = 60) -> "Cluster":
        for sub in ("munge", "state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(SLURM_CONF.format(
            host=host, dir=self.dir, cpus=cpus or os.cpu_count() or 1, cred_expire=cred_expire,
            ctld_port=_free_port(), slurmd_port=_free_port(),
        ))
        m = self.dir / "munge"
        subprocess.run([_which("munged"), "--force", f"--socket={m}/munge.socket", f"--key-file={key}",
                        f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                        f"--seed-file={m}/munged.seed"], check=True, capture_output=True, timeout=30)
        subprocess.run([_which("slurmctld"), "-f", str(self.conf)], env=self.env, check=True,
                       capture_output=True, timeout=30)
        subprocess.run([_which("slurmd"), "-f", str(self.conf)], env=self.env, check=True,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if state in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.dir.glob("*.log"))
        self.stop()
        raise RuntimeError(f"the local Slurm node did not come up (sinfo state {state!r}):\n{logs}")

    def stop(self) -> None:
        """Stop the daemons by their pid files (slurmd first), waiting for each to exit."""
        for pid_file in (self.dir / "slurmd.pid", self.dir / "slurmctld.pid", self.dir / "munge" / "munged.pid"):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job of this (private) cluster and wait until none is left, so that no
        job step outlives the daemons."""
        self.run("scancel", "--partition=debug", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", check=False).stdout.strip():
                return
            time.sleep(0.5)

    # -- job helpers -------------------------------------------------------------------------

    def submit(self, *args: str, cwd: str | Path | None = None, env: dict | None = None) -> str:
        out = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
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


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__)
        return 2
    cluster = Cluster(Path(argv[1]).resolve())
    if argv[0] == "up":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
