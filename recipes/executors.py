"""Executors of the recipes: where `recipes.task.train` runs.

* `local_executor`: this machine, `torchrun --nproc-per-node N` (WORLD_SIZE is set, so every
  torchrun worker is one rank of the trainer).
* `slurm_executor`: `sbatch` of NeMo-Run's batch template through a `run.LocalTunnel` (on a login
  node) or a `run.SSHTunnel` (from elsewhere); one srun task per GPU (or torchrun per node with
  launcher="torchrun"); pyxis container flags from `container_image` / `container_mounts`.

Both point the job at this checkout (PYTHONPATH) and, without a container, at this virtual
environment's `python`/`torchrun` (PATH), so a shared file system is assumed; inside a container,
mount the checkout and install the package there (docs/launching.md).
"""


import os
import sys
from pathlib import Path
from typing import Optional

import nemo_run as run

REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def _job_env(container: bool, env_vars: Optional[dict[str, str]], *, path_tail: str) -> dict[str, str]:
    env = {"PYTHONPATH": REPO_ROOT, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not container:
        # this environment's interpreter and torchrun, also where PATH does not carry the venv
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path_tail])
    return env | dict(env_vars or {})


def local_executor(ntasks_per_node: int = 1, launcher: Optional[str] = "torchrun",
                   env_vars: Optional[dict[str, str]] = None) -> run.LocalExecutor:
    """This machine: `ntasks_per_node` ranks started by torchrun (launcher=None: one process that
    spawns its own ranks, `policy-split train --nproc`)."""
    return run.LocalExecutor(ntasks_per_node=ntasks_per_node, launcher=launcher,
                             env_vars=_job_env(False, env_vars, path_tail=os.environ.get("PATH", "/usr/bin:/bin")))


def slurm_executor(
    account: str = "default",
    partition: Optional[str] = None,
    nodes: int = 1,
    ntasks_per_node: int = 8,
    gpus_per_node: Optional[int] = 8,
    cpus_per_task: Optional[int] = None,
    time: str = "04:00:00",
    container_image: Optional[str] = None,
    container_mounts: Optional[list[str]] = None,
    job_dir: Optional[str] = None,
    ssh_host: Optional[str] = None,
    ssh_user: Optional[str] = None,
    launcher: Optional[str] = None,
    signal: Optional[str] = "USR1@300",
    env_vars: Optional[dict[str, str]] = None,
    exclusive: Optional[bool] = None,
    mount_checkout: bool = True,
) -> run.SlurmExecutor:
    """A Slurm job of `nodes` x `ntasks_per_node` ranks (one per GPU; `gpus_per_node=None` or 0
    for CPU nodes).

    ssh_host/ssh_user: submit over SSH (run.SSHTunnel) into `job_dir` on the cluster instead of
    locally (run.LocalTunnel). Locally, NeMo-Run keeps the batch script and the logs under
    $NEMORUN_HOME/experiments (default ~/.nemo_run), which the compute nodes must see.
    launcher=None: srun starts every rank; "torchrun": one torchrun per node.
    signal: sent to the ranks before the time limit (Slurm --signal); the trainer then saves a
    checkpoint and exits, and submitting the same recipe again resumes. (The sbatch scripts in
    slurm/ also requeue the job automatically; NeMo-Run's template does not.)
    container_image: the image needs nemo_run and this package's dependencies (NeMo containers);
    the checkout is mounted at its own path (mount_checkout) and put on PYTHONPATH.
    Without a container the job uses this checkout and this environment's python by path: over
    SSH they must exist at the same paths on the cluster (or set PATH/PYTHONPATH in env_vars).
    """
    mounts = list(container_mounts or [])
    if container_image and mount_checkout and not any(m.split(":")[0] == REPO_ROOT for m in mounts):
        mounts.append(f"{REPO_ROOT}:{REPO_ROOT}")
    if ssh_host:
        tunnel = run.SSHTunnel(host=ssh_host, user=ssh_user or os.environ.get("USER", ""), job_dir=job_dir or "")
    else:
        # NeMo-Run writes the batch script into the local experiment directory and a LocalTunnel
        # submits it from there: its job_dir must stay the default ($NEMORUN_HOME/experiments).
        if job_dir:
            raise ValueError("job_dir is for SSH submission (ssh_host=...); locally set NEMORUN_HOME instead")
        tunnel = run.LocalTunnel(job_dir="")
    return run.SlurmExecutor(
        account=account,
        partition=partition,
        nodes=nodes,
        ntasks_per_node=ntasks_per_node,
        gpus_per_node=gpus_per_node or None,
        cpus_per_task=cpus_per_task,
        time=time,
        container_image=container_image,
        container_mounts=mounts,
        tunnel=tunnel,
        # the job runs the checkout in place (shared file system or a mount): no code archive
        packager=run.Packager(),
        launcher=launcher,
        signal=signal,
        exclusive=exclusive,
        job_name_prefix="policy-split.",
        # exported by the batch script: $PATH is the job's own
        env_vars=_job_env(container_image is not None, env_vars, path_tail="$PATH"),
        # srun does not inherit the job's --cpus-per-task since Slurm 22.05
        srun_args=[f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else None,
        poll_estimated_start_time=False,
    )
