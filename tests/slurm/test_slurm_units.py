"""Launch logic without a cluster: Slurm node lists, the rendezvous derived from Slurm's variables,
the layout/allocation errors raised before any work, the recipes' presets and executors, and the
spawned ranks dying with their parent."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from policy_split_megatron.distributed import expand_nodelist, slurm_rendezvous_env, tasks_on_this_node
from policy_split_megatron.trainer.launch import LaunchError, check_launch, launched_world

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("nodelist, hosts", [
    ("vm", ["vm"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("gpu[001-002,010],login1", ["gpu001", "gpu002", "gpu010", "login1"]),
    ("node[08-10]", ["node08", "node09", "node10"]),  # padding follows the lower bound
    ("n[9-11,3]", ["n9", "n10", "n11", "n3"]),  # order kept, as scontrol show hostnames
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("a-b[1-2],c.d", ["a-b1", "a-b2", "c.d"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["", "n[1-2", "n1-2]", "n[3-1]", "n[a-b]"])
def test_expand_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_tasks_on_this_node():
    assert tasks_on_this_node({"LOCAL_WORLD_SIZE": "4", "SLURM_TASKS_PER_NODE": "8"}) == 4  # torchrun wins
    assert tasks_on_this_node({"SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_NODEID": "1"}) == 8
    assert tasks_on_this_node({"SLURM_STEP_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2"}) == 2
    assert tasks_on_this_node({}) is None


def test_rendezvous_from_slurm_variables():
    env = {"SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "gpu[07-08]"}
    assert slurm_rendezvous_env(env) == {"MASTER_ADDR": "gpu07", "MASTER_PORT": str(10000 + 123456 % 20000),
                                         "LOCAL_RANK": "1", "RANK": "9", "WORLD_SIZE": "16"}
    # the step's node list wins (a step on part of the allocation); set variables are kept
    env |= {"SLURM_STEP_NODELIST": "gpu08", "MASTER_PORT": "29400"}
    assert slurm_rendezvous_env(env)["MASTER_ADDR"] == "gpu08" and "MASTER_PORT" not in slurm_rendezvous_env(env)
    assert slurm_rendezvous_env({**env, "WORLD_SIZE": "16"}) == {}  # torchrun inside srun: its variables
    assert slurm_rendezvous_env({}) == {}


def test_master_port_formula_matches_the_batch_scripts():
    text = (REPO / "slurm" / "common.sh").read_text()
    assert "MASTER_PORT=${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 20000))}" in text


STEP = {"SLURM_STEP_ID": "0", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]"}


def test_launched_world():
    assert launched_world({}) is None  # spawn local ranks
    assert launched_world({"WORLD_SIZE": "8"}) == (8, "WORLD_SIZE=8")
    assert launched_world({**STEP, "SLURM_NTASKS": "4"}) == (4, "SLURM_NTASKS=4")
    assert launched_world({"SLURM_NTASKS": "1"}) == (1, "SLURM_NTASKS=1")  # `sbatch --wrap` with one task
    with pytest.raises(LaunchError, match=r"allocation of 4 tasks .* outside any srun step.*srun policy-split train"):
        launched_world({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"})  # a batch script without srun


def test_layout_must_divide_the_launched_world():
    assert check_launch(2, 2, {**STEP, "SLURM_NTASKS": "8"}, cuda_devices=0) == 8
    with pytest.raises(LaunchError) as err:
        check_launch(4, 2, {**STEP, "SLURM_NTASKS": "12"}, cuda_devices=0)
    message = str(err.value)
    for part in ("12 processes were launched (SLURM_NTASKS=12)", "4 x 2 = 8 does not divide 12",
                 "multiple of 8", "--ntasks-per-node"):
        assert part in message, message
    with pytest.raises(LaunchError, match=r"2 x 1 = 2 does not divide 3"):
        check_launch(2, 1, {"WORLD_SIZE": "3"}, cuda_devices=0)
    assert check_launch(2, 1, {}, cuda_devices=0) is None  # nothing launched: spawn checks its own nproc


def test_every_rank_of_a_node_needs_its_own_gpu():
    env = {**STEP, "SLURM_NTASKS": "16", "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_NODEID": "0",
           "SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    with pytest.raises(LaunchError) as err:
        check_launch(2, 1, env, cuda_devices=4)
    message = str(err.value)
    for part in ("8 processes were started on this node", "4 visible GPU(s)", "CUDA_VISIBLE_DEVICES=0,1,2,3",
                 "--ntasks-per-node=4 with --gpus-per-node=4"):
        assert part in message, message
    assert check_launch(2, 1, env, cuda_devices=8) == 16
    assert check_launch(2, 1, {**env, "SLURM_GPUS_PER_TASK": "1"}, cuda_devices=1) == 16  # one bound GPU each
    with pytest.raises(LaunchError, match="2 processes were started on this node but it has 1 visible"):
        check_launch(1, 1, {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, cuda_devices=1)


def test_cpu_run_on_a_gpu_allocation_warns(capsys):
    assert check_launch(1, 1, {**STEP, "SLURM_NTASKS": "2", "SLURM_GPUS_ON_NODE": "8"}, cuda_devices=0) == 2
    assert "allocated 8 GPU(s)" in capsys.readouterr().err


# -- recipes -------------------------------------------------------------------------------------

def test_every_recipe_preset_is_a_valid_run_config():
    from recipes.presets import ALGORITHM_PRESETS, MODEL_PRESETS, embedded_default_overrides, model_overrides, validate

    for algorithm in ALGORITHM_PRESETS:
        config = validate(embedded_default_overrides(algorithm=algorithm, steps=3, logging_dir="/tmp/x"))
        assert config.algorithm.name == algorithm and config.train.steps == 3
        for model in MODEL_PRESETS:
            config = validate(model_overrides(model, algorithm, hf_path="/models/m", train_files=["/d/train.parquet"],
                                              extra=["train.steps=5"]))
            assert config.algorithm.name == algorithm and config.model.hf_path == "/models/m"
            assert config.data.train_files == ["/d/train.parquet"] and config.train.steps == 5
            assert config.parallel.tensor_parallel == MODEL_PRESETS[model]["tensor_parallel"]
            assert config.rollout.n_normal + config.rollout.n_explore == 8  # the paper's rollout size
            assert config.model.params_dtype == "bfloat16" and config.data.prompts_per_step == 256
    with pytest.raises(ValueError, match="unknown algorithm"):
        model_overrides("qwen3_8b", "ppo")


def test_recipe_factories_and_executors():
    import nemo_run as run

    from recipes import command_line, llama31_8b, local_executor, policy_split_default, qwen3_8b, slurm_executor
    from recipes.task import train

    recipe = policy_split_default(steps=2, logging_dir="/runs/x", extra=["train.seed=3"])
    assert isinstance(recipe, run.Partial) and recipe.__fn_or_cls__ is train
    assert recipe.overrides == ["train.steps=2", "logging.dir='/runs/x'", "train.seed=3"]
    assert shlex.split(command_line(recipe.overrides)) == ["policy-split", "train", *recipe.overrides]
    for factory in (qwen3_8b, llama31_8b):
        partial = factory("clip_cov", hf_path="/m", tensor_parallel=4)
        assert "algorithm.name=clip_cov" in partial.overrides and "parallel.tensor_parallel=4" in partial.overrides

    local = local_executor(ntasks_per_node=2)
    assert isinstance(local, run.LocalExecutor) and local.ntasks_per_node == 2 and local.launcher == "torchrun"
    assert local.env_vars["PYTHONPATH"] == str(REPO)
    slurm = slurm_executor(account="a", partition="p", nodes=4, cpus_per_task=16,
                           container_image="nvcr.io/nvidia/nemo:25.09", container_mounts=["/l:/l"])
    assert isinstance(slurm, run.SlurmExecutor) and isinstance(slurm.tunnel, run.LocalTunnel)
    assert (slurm.nodes, slurm.ntasks_per_node, slurm.gpus_per_node, slurm.signal) == (4, 8, 8, "USR1@300")
    assert slurm.container_mounts == ["/l:/l", f"{REPO}:{REPO}"]  # the checkout, at its own path
    assert "PATH" not in slurm.env_vars  # the image's python
    assert slurm.srun_args == ["--cpus-per-task=16"]
    ssh = slurm_executor(account="a", ssh_host="login.example", ssh_user="me", job_dir="/lustre/me/nr")
    assert isinstance(ssh.tunnel, run.SSHTunnel) and ssh.tunnel.job_dir == "/lustre/me/nr"


# -- spawned ranks die with their parent ---------------------------------------------------------

def _sleeper(rank, world_size, pid_dir):
    Path(pid_dir, f"{rank}.pid").write_text(str(os.getpid()))
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_spawned_ranks_die_with_a_killed_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from policy_split_megatron.distributed import ParallelLayout, spawn_local
        from tests.slurm.test_slurm_units import _sleeper
        spawn_local(_sleeper, 2, ParallelLayout(), {str(tmp_path)!r})
    """)], cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert parent.poll() is None, "the parent ended early"
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert all(_alive(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids), "spawned ranks outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in tmp_path.glob("*.pid"):
            try:
                os.kill(int(p.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
