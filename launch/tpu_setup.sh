#!/usr/bin/env bash
# Copies this checkout to every worker of a TPU VM and installs it there.
set -euo pipefail

usage() {
  cat <<'EOF2'
usage: launch/tpu_setup.sh -n NAME -z ZONE [-p PROJECT]

Sends every command to ALL workers of the TPU VM (gcloud ... --worker=all):
a multi-host JAX job needs the same code and packages on every host, and a
command run on one worker only leaves the others behind (or hangs the job).

  1. packs the files git tracks in this checkout (with uncommitted edits),
     copies the archive to every worker as ~/vdae.tar.gz, unpacks it to ~/vdae;
  2. creates ~/vdae-venv on every worker and installs jax[tpu] (within
     requirements.txt's range), requirements.txt, and gcsfs +
     google-cloud-storage (checkpoints and TensorBoard on gs://);
  3. checks that every worker sees the whole slice (jax.distributed).

example:
  launch/tpu_setup.sh -n vdae-v4 -z us-central2-b
EOF2
}

name="" zone="" project=""
while getopts ":n:z:p:h" opt; do
  case "$opt" in
    n) name="$OPTARG" ;;
    z) zone="$OPTARG" ;;
    p) project="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "tpu_setup.sh: -n NAME and -z ZONE are required" >&2
  usage >&2
  exit 2
fi
common=(--zone="$zone" --worker=all)
[[ -n "$project" ]] && common+=(--project="$project")
root="$(cd "$(dirname "$0")/.." && pwd)"

archive="$(mktemp -t vdae_src.XXXXXX).tar.gz"
trap 'rm -f "$archive"' EXIT
(cd "$root" && git ls-files -z | tar --null -T - -czf "$archive")
echo "tpu_setup.sh: copying the checkout to all workers of $name"
gcloud compute tpus tpu-vm scp "$archive" "$name":vdae.tar.gz "${common[@]}"

install='set -e
rm -rf ~/vdae && mkdir -p ~/vdae && tar xzf ~/vdae.tar.gz -C ~/vdae
if ! python3 -m venv ~/vdae-venv; then
  sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv
  python3 -m venv ~/vdae-venv
fi
~/vdae-venv/bin/pip install -q -U pip
jax_range=$(grep -E "^jax[<>=]" ~/vdae/requirements.txt | head -1 | sed "s/^jax//; s/ .*//")
~/vdae-venv/bin/pip install -q "jax[tpu]${jax_range}" -r ~/vdae/requirements.txt \
  gcsfs google-cloud-storage'
echo "tpu_setup.sh: installing on all workers of $name"
gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --command="$install"

check='~/vdae-venv/bin/python -c "import jax; jax.distributed.initialize(); print(\"worker\", jax.process_index(), \"of\", jax.process_count(), \":\", jax.local_device_count(), \"local /\", jax.device_count(), \"devices\")"'
echo "tpu_setup.sh: checking JAX on all workers of $name"
gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --command="$check"
echo "tpu_setup.sh: done; next: launch/tpu_run.sh -n $name -z $zone -c CONFIG -w gs://BUCKET/RUN"
