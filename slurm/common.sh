# Shared by slurm/train_one_node.sbatch and slurm/train_multi_node.sbatch (sourced by the batch
# script; see docs/launching.md). It
#   * derives the torch.distributed rendezvous from Slurm: MASTER_ADDR = first host of
#     SLURM_JOB_NODELIST, MASTER_PORT = 10000 + job id % 20000 (the same formula as
#     policy_split_megatron/distributed.py), and in every task RANK / LOCAL_RANK / WORLD_SIZE from
#     SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS;
#   * starts one task per GPU (CPU: one per process) with srun, in a pyxis/enroot container when
#     CONTAINER_IMAGE is set;
#   * handles preemption: the batch script traps SIGUSR1 (`#SBATCH --signal=B:USR1@<seconds>`) and
#     passes the request on to the trainer of every task (SIGURG to the step, SIGUSR1 to each
#     trainer: PS_TASK_SCRIPT); every rank finishes its step, saves a checkpoint and exits 0; then
#     the script requeues the job (`scontrol requeue`), which resumes from
#     <logging.dir>/checkpoints/latest with the step counter continuing.
#
# Environment knobs (all optional):
#   POLICY_SPLIT_ROOT   repository checkout (default: the directory above the submitted script)
#   POLICY_SPLIT_CMD    the command started in every task (default without a container, when
#                       $POLICY_SPLIT_ROOT/.venv/bin/python exists: that python -m policy_split_megatron.cli
#                       with the checkout first on PYTHONPATH; otherwise `policy-split` from PATH)
#   CONTAINER_IMAGE     pyxis image (e.g. nvcr.io/nvidia/nemo:25.09 or a .sqsh file); unset: no container
#   CONTAINER_MOUNTS    pyxis mounts, "src:dst[,src:dst...]" (the checkout and data/run directories)
#   CONTAINER_WORKDIR   working directory in the container (default: the submit directory)
#   SRUN_EXTRA_ARGS     more srun arguments, word-split (e.g. "--mpi=pmix --cpu-bind=none")
#   MASTER_PORT         override the derived rendezvous port
#   PS_MAX_REQUEUES     stop requeueing after this many restarts (default 50)
#   PS_DRY_RUN=1        print the environment and the srun command instead of running it

ps_log() { echo "[policy-split $(date '+%F %T')] $*"; }

ps_setup_env() {
    if [[ -z ${SLURM_JOB_ID:-} ]]; then
        echo "error: submit this script with sbatch (no SLURM_JOB_ID)" >&2
        return 2
    fi
    PS_ROOT=${POLICY_SPLIT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
    if [[ -z ${POLICY_SPLIT_CMD:-} ]]; then
        if [[ -z ${CONTAINER_IMAGE:-} && -x $PS_ROOT/.venv/bin/python ]]; then
            # the checkout's own code (not whatever the venv's installed copy points to)
            POLICY_SPLIT_CMD="$PS_ROOT/.venv/bin/python -m policy_split_megatron.cli"
            export PYTHONPATH=$PS_ROOT${PYTHONPATH:+:$PYTHONPATH}
        else
            POLICY_SPLIT_CMD=policy-split
        fi
    fi
    local first
    first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n1)
    # (if scontrol cannot expand the list, the ranks derive MASTER_ADDR themselves: distributed.py)
    [[ -n $first ]] && export MASTER_ADDR=${MASTER_ADDR:-$first}
    export MASTER_PORT=${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 20000))}
    export PYTHONUNBUFFERED=1
    export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
    # one OpenMP thread per CPU of the task unless the user chose
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
}

# What every task runs: torch.distributed's variables from its own Slurm ones (and a line naming
# the rank and host), then the command as a child; when the child ends, a line naming the rank and
# host if it failed, and whatever the child left running is ended. A stop request reaches the step
# as SIGURG (`scancel --signal=URG`), which every process ignores by default, and this wrapper turns
# it into SIGUSR1 for the trainer alone. (Slurm delivers a step's signals to every process of the
# step: SIGUSR1 itself would also kill the helper processes the trainer has at that moment, e.g. the
# writer megatron spawns while a checkpoint is being saved, and that save would fail.)
PS_TASK_SCRIPT=$(cat <<'TASK'
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
echo "[policy-split] rank $RANK of $WORLD_SIZE (local rank $LOCAL_RANK) on $(uname -n), rendezvous ${MASTER_ADDR:-<derived>}:${MASTER_PORT:-<derived>}"
child=""
trap '[ -n "$child" ] && kill -USR1 "$child" 2>/dev/null' URG
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
set -m  # the trainer in a process group of its own, so that its helpers can be ended with it
"$@" &
child=$!
while :; do
    wait "$child"
    rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; then continue; fi
    # name the rank and host that failed first: in a log of many nodes the rest is collateral
    if [ "$rc" -gt 128 ]; then
        echo "[policy-split] rank $RANK on $(uname -n): the trainer was killed by SIG$(kill -l $((rc - 128)))" >&2
    elif [ "$rc" -ne 0 ]; then
        echo "[policy-split] rank $RANK on $(uname -n): the trainer exited with status $rc" >&2
    fi
    # helpers a killed trainer leaves behind (checkpoint writers, engine workers) would hold the
    # step's output open, and Slurm would wait 60 s for it before ending the step
    kill -KILL -- "-$child" 2>/dev/null
    exit "$rc"
done
TASK
)

# The srun command line of the training step, in the array PS_SRUN.
ps_build_srun() {
    PS_SRUN=(srun --kill-on-bad-exit=1)
    # Since Slurm 22.05 srun does not inherit the batch job's --cpus-per-task: pass it on.
    [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && PS_SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    if [[ -n ${CONTAINER_IMAGE:-} ]]; then
        PS_SRUN+=(--container-image="$CONTAINER_IMAGE" --no-container-mount-home
                  --container-workdir="${CONTAINER_WORKDIR:-${SLURM_SUBMIT_DIR:-$PWD}}")
        [[ -n ${CONTAINER_MOUNTS:-} ]] && PS_SRUN+=(--container-mounts="$CONTAINER_MOUNTS")
    fi
    if [[ -n ${SRUN_EXTRA_ARGS:-} ]]; then
        local -a extra
        read -r -a extra <<< "$SRUN_EXTRA_ARGS"
        PS_SRUN+=("${extra[@]}")
    fi
    PS_SRUN+=(bash -c "$PS_TASK_SCRIPT" policy-split-task)
}

_ps_on_signal() {
    PS_SIGNALLED=$1
    ps_log "batch script got SIG$1: asking the training step to checkpoint and stop"
    # SIGURG to the step's processes (see PS_TASK_SCRIPT); srun does not forward SIGURG itself
    scancel --signal=URG "$SLURM_JOB_ID" || kill -s USR1 "$PS_SRUN_PID" 2>/dev/null
}

# ps_run_training ARGS...: `policy-split train ARGS...` in every task, with preemption handling.
ps_run_training() {
    ps_setup_env || return $?
    ps_build_srun
    local -a cmd=($POLICY_SPLIT_CMD train "$@")
    ps_log "job $SLURM_JOB_ID (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_JOB_NUM_NODES:-1} node(s)" \
           "[$SLURM_JOB_NODELIST], ${SLURM_NTASKS:-?} task(s), MASTER_ADDR=${MASTER_ADDR:-<derived per rank>}" \
           "MASTER_PORT=$MASTER_PORT, container=${CONTAINER_IMAGE:-none}"
    ps_log "command: ${cmd[*]}"
    if [[ ${PS_DRY_RUN:-0} == 1 ]]; then
        local arg
        printf 'PS_DRY_RUN:'
        for arg in "${PS_SRUN[@]}" "${cmd[@]}"; do
            if [[ $arg == "$PS_TASK_SCRIPT" ]]; then printf ' "$PS_TASK_SCRIPT"'; else printf ' %q' "$arg"; fi
        done
        printf '\nPS_TASK_SCRIPT:\n%s\n' "$PS_TASK_SCRIPT"
        return 0
    fi
    PS_SIGNALLED=""
    trap '_ps_on_signal USR1' USR1
    "${PS_SRUN[@]}" "${cmd[@]}" &
    PS_SRUN_PID=$!
    local rc
    while true; do
        wait "$PS_SRUN_PID"
        rc=$?
        # wait returns early (status > 128) when a trapped signal arrives: keep waiting for srun
        if (( rc > 128 )) && kill -0 "$PS_SRUN_PID" 2>/dev/null; then
            continue
        fi
        break
    done
    trap - USR1
    ps_log "training step exited with status $rc"
    if [[ -z $PS_SIGNALLED ]] && (( rc != 0 )); then
        ps_log "error: the training step failed with status $rc (the failing rank and host are named above)." \
               "A new job with the same command (or Slurm's own requeue after a node failure) resumes from the" \
               "last checkpoint, <logging.dir>/checkpoints/latest."
    fi
    if [[ -n $PS_SIGNALLED ]]; then
        if (( ${SLURM_RESTART_COUNT:-0} < ${PS_MAX_REQUEUES:-50} )); then
            ps_log "requeueing job $SLURM_JOB_ID (restart $(( ${SLURM_RESTART_COUNT:-0} + 1 ))); it resumes from the last checkpoint"
            scontrol requeue "$SLURM_JOB_ID"
            exit 0  # Slurm ends this script and starts the job again
        fi
        ps_log "not requeueing: restart count ${SLURM_RESTART_COUNT:-0} reached PS_MAX_REQUEUES=${PS_MAX_REQUEUES:-50}"
    fi
    return "$rc"
}
