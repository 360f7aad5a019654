#!/usr/bin/env bash
# Copies this checkout to every worker of a TPU VM and installs it there.
set -euo pipefail

usage() {
  cat <<'EOF2'
usage: launch/tpu_setup.sh -n NAME -z ZONE [-p PROJECT] [-d SRC=DIR ...]

Sends every command to ALL workers of the TPU VM (gcloud ... --worker=all):
a multi-host JAX job needs the same code and packages on every host, and a
command run on one worker only leaves the others behind (or hangs the job).

  1. packs this checkout's files (tracked ones with their uncommitted edits, and
     new files git does not ignore, e.g. a config not yet committed), copies the
     archive to every worker as ~/vdae.tar.gz, unpacks it to ~/vdae;
  2. creates ~/vdae-venv on every worker and installs jax[tpu] (within
     requirements.txt's range), requirements.txt, and gcsfs +
     google-cloud-storage (checkpoints and TensorBoard on gs://);
  3. checks that every worker sees the whole slice (jax.distributed);
  4. with -d SRC=DIR (repeatable): copies gs:// SRC (an object, a folder or a
     glob) into the absolute local folder DIR on every worker. vdae reads data
     and imported weights from local disk (the ArrayRecord reader opens plain
     files), so point --config.data.path / --config.model.path at DIR; the
     workdir itself stays on gs://.

examples:
  launch/tpu_setup.sh -n vdae-v4 -z us-central2-b
  launch/tpu_setup.sh -n vdae-v4 -z us-central2-b \
      -d 'gs://BUCKET/cifar10/*=/tmp/vdae-data/cifar10' \
      -d 'gs://BUCKET/ddpm-cifar10-32=/tmp/vdae-data'
EOF2
}

name="" zone="" project="" copies=()
while getopts ":n:z:p:d:h" opt; do
  case "$opt" in
    n) name="$OPTARG" ;;
    z) zone="$OPTARG" ;;
    p) project="$OPTARG" ;;
    d) copies+=("$OPTARG") ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "tpu_setup.sh: -n NAME and -z ZONE are required" >&2
  usage >&2
  exit 2
fi
for c in "${copies[@]}"; do
  src="${c%%=*}" dir="${c#*=}"
  if [[ "$c" != *=* || "$src" != gs://* || "$dir" != /* ]]; then
    echo "tpu_setup.sh: -d takes gs://SRC=/ABSOLUTE/DIR; got '$c'" >&2
    exit 2
  fi
done
common=(--zone="$zone" --worker=all)
[[ -n "$project" ]] && common+=(--project="$project")
root="$(cd "$(dirname "$0")/.." && pwd)"

archive="$(mktemp -t vdae_src.XXXXXX).tar.gz"
trap 'rm -f "$archive"' EXIT
# Tracked files as they are on disk, and untracked ones git does not ignore.
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
  tar --null -T - -czf "$archive")
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
for c in "${copies[@]}"; do
  src="${c%%=*}" dir="${c#*=}"
  copy="mkdir -p $(printf %q "$dir") && gcloud storage cp -r $(printf '%q %q' "$src" "$dir/")"
  echo "tpu_setup.sh: copying $src to $dir on all workers of $name"
  gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --command="$copy"
done
echo "tpu_setup.sh: done; next: launch/tpu_run.sh -n $name -z $zone -c CONFIG -w gs://BUCKET/RUN"
