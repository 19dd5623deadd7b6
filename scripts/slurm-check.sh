#!/usr/bin/env bash
# Data-parallel pretraining under Slurm's own launcher, on this one machine: starts a private
# one-node Slurm cluster (munge, slurmctld and slurmd with a configuration in a scratch folder),
# runs `srun --mpi=pmix -n 2 electra pretrain --batch 2` and checks that its checkpoints are byte for
# byte those of one process with `--batch 2 --accumulate 2`, as tests/mpi_ranks.rs checks under
# mpirun; then stops the daemons. Needs a build with the mpi feature:
#   cargo build --release --features mpi && bash scripts/slurm-check.sh [target/release/electra]
# Installs Debian's slurm-wlm and munge when they are missing. Run it as root on a machine with no
# Slurm of its own: it starts its daemons on ports 16817-16818, with every file in a scratch folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/electra}")
[ -x "$bin" ] || { echo "no electra binary at $bin (cargo build --release --features mpi)" >&2; exit 2; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge
fi
bash scripts/fetch-data.sh >/dev/null
work=$(mktemp -d)
pids=()
stop() {
    # The daemons detach (they are not this shell's children): wait until each has gone.
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    done
    rm -rf "$work" || true
}
trap stop EXIT
# The pid a daemon writes to $1 once it has detached (waiting up to 20 s).
pid_of() {
    for _ in $(seq 100); do [ -s "$1" ] && { cat "$1"; return; }; sleep 0.2; done
    echo "no pid file $1: the daemon did not start" >&2
    cat "$work"/*.log "$work/munge/log" >&2 2>/dev/null || true
    return 1
}

# munge authenticates Slurm's messages: a key, a socket and a daemon of our own.
mkdir -p "$work/munge"
dd if=/dev/urandom of="$work/munge/key" bs=1024 count=1 2>/dev/null
chmod 400 "$work/munge/key"
munged --force --socket="$work/munge/socket" --pid-file="$work/munge/pid" --log-file="$work/munge/log" \
    --seed-file="$work/munge/seed" --key-file="$work/munge/key"
pids+=("$(pid_of "$work/munge/pid")")

host=$(hostname)
mkdir -p "$work/state" "$work/spool"
cat >"$work/slurm.conf" <<EOF
ClusterName=electra-check
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF
export SLURM_CONF=$work/slurm.conf
slurmctld -i
pids+=("$(pid_of "$work/slurmctld.pid")")
slurmd
pids+=("$(pid_of "$work/slurmd.pid")")
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -Eq '^idle' && break
    sleep 1
done
sinfo -h -o "%P %D %T %c" || { cat "$work/slurmctld.log" "$work/slurmd.log" >&2; exit 1; }

data=$work/shards
cat data/sotu/179*.txt >"$work/text.txt"
"$bin" prepare --input "$work/text.txt" --train-vocab 2000 --seq-len 64 --out "$data" 2>/dev/null
args=(pretrain --preset tiny --data "$data" --steps 6 --warmup 2 --seed 3 --log-every 1 --checkpoint-every 3)
echo "=== srun --mpi=pmix -n 2 electra ${args[*]} --batch 2"
RAYON_NUM_THREADS=1 timeout 300 srun --mpi=pmix -n 2 "$bin" "${args[@]}" --batch 2 --out "$work/ranks" \
    2>"$work/srun.log" || { cat "$work/srun.log" >&2; exit 1; }
tail -n 3 "$work/srun.log"
[ "$(grep -c 'finished at step 6' "$work/srun.log")" = 1 ] \
    || { echo "FAILED: not one rank-0 report of the end" >&2; cat "$work/srun.log" >&2; exit 1; }
echo "=== one process, --batch 2 --accumulate 2"
RAYON_NUM_THREADS=1 "$bin" "${args[@]}" --batch 2 --accumulate 2 --out "$work/acc" 2>/dev/null
for step in 3 6; do
    for f in model.safetensors optimizer.safetensors; do
        cmp "$work/ranks/checkpoints/step-$step/$f" "$work/acc/checkpoints/step-$step/$f" \
            || { echo "FAILED: step $step $f differs" >&2; exit 1; }
    done
done
echo "slurm check: srun -n 2 wrote the checkpoints of --accumulate 2 byte for byte (steps 3 and 6)"
