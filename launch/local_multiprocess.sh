#!/usr/bin/env bash
# N cooperating processes on this machine, as on N hosts: JAX's distributed
# runtime on 127.0.0.1 with gloo CPU collectives, each process with its own
# forced CPU devices and its own shard of every batch.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/local_multiprocess.sh [-n N] [-d DEVICES] [-p PORT] [-l LOGDIR] [-e ENTRY] [--] FLAGS...

Starts N processes of `python -m vdae.main FLAGS...` (or of ENTRY) on 127.0.0.1
as one multi-process JAX job: process i gets VDAE_COORDINATOR=127.0.0.1:PORT,
VDAE_NUM_PROCESSES=N, VDAE_PROCESS_ID=i, JAX_PLATFORMS=cpu and
--xla_force_host_platform_device_count=DEVICES. Every process runs the same
command (as every host of a pod must).

  -n N        processes (default 2)
  -d DEVICES  CPU devices per process (default 2)
  -p PORT     coordinator port (default: a free one)
  -l LOGDIR   process i writes LOGDIR/process_i.log (default: a new temp dir);
              process 0 also prints to this terminal
  -e ENTRY    a Python module (vdae.main) or script path (tests/x.py) to run
              instead of vdae.main; takes the same FLAGS
  PYTHON      environment variable: the interpreter (default: the repository's
              .venv/bin/python, which README's install makes, else python3)

Waits for all processes. If one fails, the others are killed at once (they
would otherwise wait in a collective until the heartbeat timeout) and the exit
status is the failed one's. If one exits 143 (preempted: it saved a
checkpoint), the others get PREEMPT_GRACE seconds (default 300) to reach the
same save. A SIGTERM or SIGINT to this script is forwarded to every process as
SIGTERM: all of them save at the next step boundary and exit 143.

example:
  launch/local_multiprocess.sh -n 2 -d 2 -- --config=configs/tiny.py \
      --workdir=runs/mp --mode=pretrain
EOF
}

nproc_=2
devices=2
port=""
logdir=""
entry="vdae.main"
while getopts ":n:d:p:l:e:h" opt; do
  case "$opt" in
    n) nproc_="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) logdir="$OPTARG" ;;
    e) entry="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  usage >&2
  exit 2
fi
grace="${PREEMPT_GRACE:-300}"
# Relative paths stay relative to the caller's directory; the repository
# root goes on PYTHONPATH so vdae and configs import from anywhere.
root="$(cd "$(dirname "$0")/.." && pwd)"
[[ -x "$root/.venv/bin/python" ]] && python="$root/.venv/bin/python" || python=python3
python="${PYTHON:-$python}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
logdir="${logdir:-$(mktemp -d -t vdae_mp.XXXXXX)}"
mkdir -p "$logdir"
if [[ "$entry" == *.py ]]; then cmd=("$python" -u "$entry"); else cmd=("$python" -u -m "$entry"); fi

echo "launch: $nproc_ processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $logdir"
echo "launch: every process runs: ${cmd[*]} $*"
pids=()
for ((i = 0; i < nproc_; i++)); do
  log="$logdir/process_$i.log"
  env VDAE_COORDINATOR="127.0.0.1:$port" VDAE_NUM_PROCESSES="$nproc_" VDAE_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
    "${cmd[@]}" "$@" > >(if [[ $i -eq 0 ]]; then tee "$log"; else cat > "$log"; fi) 2>&1 &
  pids+=("$!")
  echo "launch: process $i pid ${pids[$i]} log $log"
done

forward_term() {
  echo "launch: forwarding SIGTERM to all processes (each saves at its next step boundary)"
  kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap forward_term TERM INT

kill_rest() {
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

# Poll rather than `wait -n`: we need to know which process ended, and a
# trapped signal must not end the wait loop.
declare -A status=()
first_bad=0
preempted_at=""
while ((${#status[@]} < nproc_)); do
  for ((i = 0; i < nproc_; i++)); do
    [[ -n "${status[$i]:-}" ]] && continue
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      rc=0
      wait "${pids[$i]}" || rc=$?
      status[$i]=$rc
      echo "launch: process $i exited with status $rc"
      if ((rc == 143)); then
        preempted_at="${preempted_at:-$SECONDS}"
      elif ((rc != 0 && first_bad == 0)); then
        first_bad=$rc
        echo "launch: process $i failed; killing the others (see $logdir/process_$i.log)" >&2
        kill_rest
      fi
    fi
  done
  if [[ -n "$preempted_at" ]] && ((SECONDS - preempted_at > grace)); then
    echo "launch: processes still running ${grace}s after a preemption save; killing them" >&2
    kill_rest
    preempted_at=$((SECONDS + 1000000))
  fi
  sleep 0.5
done

if ((first_bad != 0)); then exit "$first_bad"; fi
for rc in "${status[@]}"; do
  if ((rc == 143)); then exit 143; fi
done
exit 0
