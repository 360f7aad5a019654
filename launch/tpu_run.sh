#!/usr/bin/env bash
# Runs every stage (score model, encoder, latent prior, VAE, refiner) and the
# evaluation on every worker of a TPU VM, with the
# workdir (checkpoints, TensorBoard, outputs) in a gs:// bucket.
set -euo pipefail

usage() {
  cat <<'EOF2'
usage: launch/tpu_run.sh -n NAME -z ZONE -c CONFIG -w gs://BUCKET/RUN [-p PROJECT]
                         [-m MODES] [--] [FLAGS...]

Sends every command to ALL workers (gcloud ... tpu-vm ssh --worker=all): each
host runs the same `python -m vdae.main` with VDAE_AUTO_DISTRIBUTED=1, so
jax.distributed.initialize() finds the others, each host reads its own shard of
every batch, and all hosts write their parts of each checkpoint to WORKDIR.
The modes run one after another; a failed or preempted one stops the script.
Run the same command again to resume: every stage continues from its newest
checkpoint (a finished stage is restored and skipped).

  -n NAME     TPU VM name            -z ZONE    its zone
  -c CONFIG   config path inside the checkout, e.g. configs/cifar10.py (as shipped by
              tpu_setup.sh: rerun it after editing a config)
  -w WORKDIR  gs://BUCKET/RUN: every host must see the same directory
  -p PROJECT  GCP project (default: gcloud's configured one)
  -m MODES    comma-separated vdae.main modes (default pretrain,train_encoder,train_prior,train_vae,
              train_refiner,evaluate)
  FLAGS       more vdae.main flags for every mode, e.g. --config.stage1.num_steps=20000

example:
  launch/tpu_run.sh -n vdae-v4 -z us-central2-b -c configs/cifar10.py \
      -w gs://my-bucket/vdae/cifar10 -- --config.stage1.batch_size=512
EOF2
}

name="" zone="" config="" workdir="" project="" modes="pretrain,train_encoder,train_prior,train_vae,train_refiner,evaluate"
while getopts ":n:z:c:w:p:m:h" opt; do
  case "$opt" in
    n) name="$OPTARG" ;;
    z) zone="$OPTARG" ;;
    c) config="$OPTARG" ;;
    w) workdir="$OPTARG" ;;
    p) project="$OPTARG" ;;
    m) modes="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ -z "$name" || -z "$zone" || -z "$config" || -z "$workdir" ]]; then
  echo "tpu_run.sh: -n NAME, -z ZONE, -c CONFIG and -w WORKDIR are required" >&2
  usage >&2
  exit 2
fi
if [[ "$workdir" != gs://* ]]; then
  echo "tpu_run.sh: WORKDIR must be a gs:// path that every worker shares; got $workdir" >&2
  exit 2
fi
# The workers run the copy launch/tpu_setup.sh shipped: files git ignores never reach them.
root="$(cd "$(dirname "$0")/.." && pwd)"
config_file="${config%%:*}"
if [[ ! -f "$root/$config_file" ]] || git -C "$root" check-ignore -q "$config_file"; then
  echo "tpu_run.sh: -c $config_file is not a file of this checkout that tpu_setup.sh ships" \
    "(paths are relative to the checkout; git-ignored files are not shipped)" >&2
  exit 2
fi
common=(--zone="$zone" --worker=all)
[[ -n "$project" ]] && common+=(--project="$project")

IFS=',' read -r -a mode_list <<<"$modes"
for mode in "${mode_list[@]}"; do
  # printf %q: the flags reach the remote shell exactly as typed here.
  remote="cd ~/vdae && VDAE_AUTO_DISTRIBUTED=1 ~/vdae-venv/bin/python -m vdae.main"
  remote+="$(printf ' %q' "--config=$config" "--workdir=$workdir" "--mode=$mode" "$@")"
  echo "tpu_run.sh: [$mode] on all workers of $name: $remote"
  rc=0
  gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --command="$remote" || rc=$?
  if ((rc != 0)); then
    echo "tpu_run.sh: [$mode] ended with status $rc (143: preempted after saving a checkpoint)." \
      "Run the same command again to resume." >&2
    exit "$rc"
  fi
done
echo "tpu_run.sh: done; launch/tensorboard.sh -w $workdir"
