#!/usr/bin/env bash
# Smoke test of the dev Slurm cluster (run after up.sh). Exits non-zero if any check
# fails. Prints the measured latencies. Takes about a minute.
#   SMOKE_NODE_DOWN=1  also run the node-down/requeue check even if other users'
#                      jobs are on the cluster (they would be requeued too);
#                      by default it is skipped when foreign jobs are present.
#   SMOKE_PYTHON       python with submitit+torch (default: <repo>/.venv/bin/python)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO="$(cd "$DEV_DIR/../.." && pwd)"
PY="${SMOKE_PYTHON:-$REPO/.venv/bin/python}"
W="$(mktemp -d /tmp/slingshot-smoke.XXXXXX)"
chmod 755 "$W"
j=""             # job id set by submit()
mine=()          # job ids submitted here (cancelled on exit)
failed=()
trap 'if ((${#mine[@]})); then scancel "${mine[@]}" 2>/dev/null || true; fi' EXIT

pass() { printf '  PASS  %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*" >&2; failed+=("$1"); }
now()  { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
# until_true <timeout_s> <cmd...> (polls every 0.1 s)
until_true() {
    local t="$1"; shift
    local deadline; deadline=$(awk -v a="$(now)" -v t="$t" 'BEGIN{printf "%d", a+t}')
    until "$@"; do (( $(date +%s) < deadline )) || return 1; sleep 0.1; done
}
job_state() { squeue -h -j "$1" -o '%T' 2>/dev/null || true; }
is_running() { [[ "$(job_state "$1")" == RUNNING ]]; }
has_line() { grep -q -- "$2" "$1" 2>/dev/null; }
# submit <var> <sbatch args...>: sets <var> to the job id (not in a $(...) subshell,
# so that the id is remembered in $mine for the clean-up on exit)
submit() {
    local __var="$1" __j; shift
    __j="$(sbatch --parsable "$@")" || return 1
    __j="${__j%%;*}"
    mine+=("$__j")
    printf -v "$__var" '%s' "$__j"
}

echo "== dev cluster smoke test (work dir $W)"

# 0. nodes
for n in "${NODES[@]}"; do
    s="$(node_state "$n")"
    case "$s" in idle|mixed|allocated) pass "node $n is $s";; *) fail "node-$n" "node $n is '$s'";; esac
done

# 1. sbatch + submit-to-running latency (script actually started)
lat=()
for i in 1 2 3; do
    t0=$(now)
    submit j -o "$W/lat-%j.out" --wrap "touch '$W/lat.$i'; sleep 1"
    if until_true 30 test -e "$W/lat.$i"; then lat+=("$(since "$t0")"); else fail sbatch "job $j did not start in 30 s"; fi
done
((${#lat[@]})) && pass "sbatch: submit -> script running: ${lat[*]} s"

# 2. srun across both nodes
# shellcheck disable=SC2016  # expanded by the job, not here
out="$(timeout 60 srun -N2 --ntasks-per-node=1 bash -c 'echo "$SLURMD_NODENAME"' 2>&1 | sort | tr '\n' ' ')" || true
if [[ "$out" == "n1 n2 " ]]; then pass "srun -N2: ran on $out"; else fail srun "srun -N2 printed '$out'"; fi

# 3. GPU gres -> CUDA_VISIBLE_DEVICES
# shellcheck disable=SC2016
submit j --wait -o "$W/gpu-%j.out" --gpus-per-node=1 --wrap 'echo "CVD=${CUDA_VISIBLE_DEVICES:-unset} node=$SLURMD_NODENAME"'
line="$(cat "$W/gpu-$j.out" 2>/dev/null || true)"
if [[ "$line" == CVD=[0-9]* ]]; then pass "--gpus-per-node=1: $line"; else fail gpu "--gpus-per-node=1 job printed '$line'"; fi

# 4. sacct shows finished jobs
if until_true 20 bash -c "sacct -n -X -P -j '$j' -o State | grep -qx COMPLETED"; then
    pass "sacct: job $j COMPLETED"
else
    fail sacct "sacct -j $j: '$(sacct -n -X -P -j "$j" -o State 2>&1)'"
fi

# 5. scontrol requeue of a running job: same id, SLURM_RESTART_COUNT=1
cat > "$W/rq.sh" <<'SH'
#!/bin/bash
echo "run restart=${SLURM_RESTART_COUNT:-0} node=$SLURMD_NODENAME"
sleep 300
SH
submit j -o "$W/rq-%j.out" --open-mode=append "$W/rq.sh"
if until_true 30 has_line "$W/rq-$j.out" 'restart=0'; then
    t0=$(now)
    scontrol requeue "$j"
    if until_true 60 has_line "$W/rq-$j.out" 'restart=1'; then
        pass "scontrol requeue $j: same id, restarted with SLURM_RESTART_COUNT=1 after $(since "$t0") s"
    else
        fail requeue "job $j not restarted within 60 s: $(squeue -h -j "$j" -o '%T %r')"
    fi
else
    fail requeue "job $j did not start"
fi
scancel "$j"

# 6. USR2: scancel --signal=USR2 --batch (batch shell only) and --full (all processes)
cat > "$W/u2.sh" <<'SH'
#!/bin/bash
trap 'echo "shell got USR2"' USR2
python3 -c '
import signal, time
signal.signal(signal.SIGUSR2, lambda *a: print("child got USR2", flush=True))
time.sleep(60)' &
echo ready
for i in $(seq 600); do sleep 0.1; done
SH
for mode in batch full; do
    submit j -o "$W/u2-$mode-%j.out" "$W/u2.sh"
    if until_true 30 has_line "$W/u2-$mode-$j.out" ready; then
        sleep 0.5   # let python install its handler
        scancel --signal=USR2 "--$mode" "$j"
        until_true 10 has_line "$W/u2-$mode-$j.out" 'shell got USR2' || true
        sleep 0.5
        shell=no; child=no
        has_line "$W/u2-$mode-$j.out" 'shell got USR2' && shell=yes
        has_line "$W/u2-$mode-$j.out" 'child got USR2' && child=yes
        if [[ $mode == batch && $shell == yes && $child == no ]] || [[ $mode == full && $shell == yes && $child == yes ]]; then
            pass "scancel --signal=USR2 --$mode: batch shell=$shell, its child process=$child"
        else
            fail "usr2-$mode" "scancel --signal=USR2 --$mode: batch shell=$shell, child=$child"
        fi
    else
        fail "usr2-$mode" "job $j did not start"
    fi
    scancel "$j"
done

# 7. #SBATCH --signal=B:USR2@55 with a 1-minute limit: USR2 arrives before the limit
cat > "$W/tl.sh" <<'SH'
#!/bin/bash
#SBATCH -t 1
#SBATCH --signal=B:USR2@55
trap 'echo "USR2 after $SECONDS s"' USR2
for i in $(seq 1200); do sleep 0.1; done
SH
submit j -o "$W/tl-%j.out" "$W/tl.sh"
if until_true 75 has_line "$W/tl-$j.out" 'USR2 after'; then
    pass "--signal=B:USR2@55 -t 1: $(grep -m1 'USR2 after' "$W/tl-$j.out") of the 60 s limit"
else
    fail signal-at "no USR2 within 75 s of --signal=B:USR2@55 (job $j: $(job_state "$j"))"
fi
scancel "$j"

# 8. node down -> batch job requeued (same id) onto the other node
foreign="$(squeue -h -t PENDING,RUNNING -o '%i' | grep -vxF -f <(printf '%s\n' "${mine[@]}") || true)"
if [[ -n "$foreign" && "${SMOKE_NODE_DOWN:-0}" != 1 ]]; then
    echo "  SKIP  node-down check: other jobs on the cluster ($(echo "$foreign" | tr '\n' ' ')); SMOKE_NODE_DOWN=1 forces it"
else
    submit j -o "$W/nd-%j.out" --open-mode=append "$W/rq.sh"
    if until_true 30 has_line "$W/nd-$j.out" 'restart=0'; then
        n="$(squeue -h -j "$j" -o '%N')"
        other=n1; [[ $n == n1 ]] && other=n2
        t0=$(now)
        "$DEV_DIR/node.sh" down "$n" "smoke test" >/dev/null
        if until_true 60 has_line "$W/nd-$j.out" "restart=1 node=$other"; then
            pass "node.sh down $n: job $j requeued, same id, ran on $other with SLURM_RESTART_COUNT=1 after $(since "$t0") s"
        else
            fail node-down "job $j not restarted on $other: $(squeue -h -j "$j" -o '%T %r %N'); $(cat "$W/nd-$j.out")"
        fi
        "$DEV_DIR/node.sh" up "$n" >/dev/null || fail node-up "node.sh up $n failed"
    else
        fail node-down "job $j did not start"
    fi
    scancel "$j"
fi

# 9. submitit from the venv: nodes=2, tasks_per_node=1, gloo all_reduce across n1/n2
if [[ -x "$PY" ]] && "$PY" -c 'import submitit, torch' 2>/dev/null; then
    cat > "$W/gloo.py" <<'PY'
import os, sys, time
import submitit

def allreduce():
    import torch, torch.distributed as dist
    from submitit.helpers import TorchDistributedEnvironment
    env = TorchDistributedEnvironment().export()
    dist.init_process_group("gloo")
    x = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(x)
    dist.destroy_process_group()
    return env.rank, os.environ["SLURMD_NODENAME"], float(x.item()), sys.executable

ex = submitit.AutoExecutor(folder=sys.argv[1])
ex.update_parameters(nodes=2, tasks_per_node=1, cpus_per_task=1, timeout_min=5)
t0 = time.time()
job = ex.submit(allreduce)
res = job.results()
dt = time.time() - t0
print(f"job {job.job_id}: {res} in {dt:.1f} s")
assert sorted(r[1] for r in res) == ["n1", "n2"], res
assert all(r[2] == 3.0 for r in res), res
assert all(r[3] == sys.executable for r in res), res
print(f"SECONDS={dt:.1f}")
PY
    t0=$(now)
    if out="$(cd "$W" && timeout 180 "$PY" gloo.py "$W/submitit" 2>&1)"; then
        pass "submitit nodes=2 gloo all_reduce (python $PY): $(grep -o 'SECONDS=.*' <<<"$out" | cut -d= -f2) s submit->results"
    else
        fail gloo "submitit gloo job failed: $out"
    fi
else
    fail gloo "$PY missing or lacks submitit/torch"
fi

echo
if ((${#failed[@]})); then
    echo "SMOKE FAILED: ${failed[*]} (work dir $W)" >&2
    exit 1
fi
echo "SMOKE OK (work dir $W)"
