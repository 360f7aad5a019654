#!/usr/bin/env bash
# Creates a TPU VM (one host or a multi-host pod slice), directly or through a
# queued resource that waits for capacity.
set -euo pipefail

usage() {
  cat <<'EOF2'
usage: launch/tpu_create.sh -n NAME -z ZONE -a ACCELERATOR [-v VERSION] [-p PROJECT] [-s] [-q]

  -n NAME         TPU VM name (also the queued resource's name with -q)
  -z ZONE         e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p)
  -a ACCELERATOR  e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-16, v5p-32
  -v VERSION      TPU software version (default by generation: v4 tpu-ubuntu2204-base,
                  v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  -p PROJECT      GCP project (default: gcloud's configured one)
  -s              spot capacity (cheaper, preemptible: runs resume from checkpoints)
  -q              queued resource: wait in Google's queue for capacity, then create
  QUEUE_TIMEOUT   environment: seconds to wait for a queued resource (default 7200)

Then: launch/tpu_setup.sh (install on every worker), launch/tpu_run.sh (run on
every worker).

example:
  launch/tpu_create.sh -n vdae-v4 -z us-central2-b -a v4-16 -s -q
EOF2
}

name="" zone="" accel="" version="" project="" spot=0 queued=0
while getopts ":n:z:a:v:p:sqh" opt; do
  case "$opt" in
    n) name="$OPTARG" ;;
    z) zone="$OPTARG" ;;
    a) accel="$OPTARG" ;;
    v) version="$OPTARG" ;;
    p) project="$OPTARG" ;;
    s) spot=1 ;;
    q) queued=1 ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" || -z "$accel" ]]; then
  echo "tpu_create.sh: -n NAME, -z ZONE and -a ACCELERATOR are required" >&2
  usage >&2
  exit 2
fi
if [[ -z "$version" ]]; then
  case "$accel" in
    v4-*) version="tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) echo "tpu_create.sh: no default software version for $accel; pass -v" >&2; exit 2 ;;
  esac
fi
common=(--zone="$zone")
[[ -n "$project" ]] && common+=(--project="$project")
extra=()
((spot)) && extra+=(--spot)

if ((queued)); then
  echo "tpu_create.sh: queueing $accel as $name in $zone (software $version)"
  gcloud compute tpus queued-resources create "$name" --node-id="$name" \
    --accelerator-type="$accel" --runtime-version="$version" "${common[@]}" "${extra[@]}"
  deadline=$((SECONDS + ${QUEUE_TIMEOUT:-7200}))
  while true; do
    state="$(gcloud compute tpus queued-resources describe "$name" "${common[@]}" \
      --format='value(state.state)')"
    echo "tpu_create.sh: queued resource $name is $state"
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED) echo "tpu_create.sh: giving up ($state)" >&2; exit 1 ;;
    esac
    if ((SECONDS > deadline)); then
      echo "tpu_create.sh: still $state after ${QUEUE_TIMEOUT:-7200}s; it stays queued" >&2
      exit 1
    fi
    sleep "${QUEUE_POLL:-60}"
  done
else
  echo "tpu_create.sh: creating $accel as $name in $zone (software $version)"
  gcloud compute tpus tpu-vm create "$name" --accelerator-type="$accel" --version="$version" \
    "${common[@]}" "${extra[@]}"
fi
echo "tpu_create.sh: $name is ready; next: launch/tpu_setup.sh -n $name -z $zone"
