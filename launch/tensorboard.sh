#!/usr/bin/env bash
# TensorBoard for a run, on this machine (a viewer: nothing runs on TPU workers).
set -euo pipefail

usage() {
  cat <<'EOF2'
usage: launch/tensorboard.sh -w WORKDIR [-P PORT]

Serves WORKDIR/tensorboard (one run per stage: stage1, stage2, ...) on
http://localhost:PORT. WORKDIR may be local or gs://BUCKET/RUN (read by
TensorBoard's data server; needs `gcloud auth application-default login`).
Only process 0 of a run writes TensorBoard files, so one directory holds it all.
Runs locally: it is not sent to the TPU workers.

  -w WORKDIR  the run's --workdir
  -P PORT     default 6006
  PYTHON      environment variable: interpreter whose tensorboard to use (default: the
              repository's .venv/bin/python, which README's install makes, else python3)

example:
  launch/tensorboard.sh -w gs://my-bucket/vdae/cifar10
EOF2
}

workdir="" port=6006
while getopts ":w:P:h" opt; do
  case "$opt" in
    w) workdir="$OPTARG" ;;
    P) port="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
if [[ -z "$workdir" ]]; then
  echo "tensorboard.sh: -w WORKDIR is required" >&2
  usage >&2
  exit 2
fi
logdir="${workdir%/}/tensorboard"
extra=()
# The Rust data server reads gs:// without TensorFlow.
[[ "$logdir" == gs://* ]] && extra+=(--load_fast=true)
root="$(cd "$(dirname "$0")/.." && pwd)"
[[ -x "$root/.venv/bin/python" ]] && default_python="$root/.venv/bin/python" || default_python=python3
exec "${PYTHON:-$default_python}" -m tensorboard.main --logdir="$logdir" --port="$port" "${extra[@]}"
