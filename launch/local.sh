#!/usr/bin/env bash
# One process on this machine: the whole pipeline (score model, encoder, latent prior,
# VAE, refiner, pictures, evaluation).
set -euo pipefail

usage() {
  cat <<'EOF2'
usage: launch/local.sh [-c CONFIG] [-w WORKDIR] [--] [FLAGS...]

Runs `python -m vdae.main --config=CONFIG --workdir=WORKDIR --mode=all FLAGS...`
in this process (exec: a SIGTERM reaches Python, which saves a checkpoint at
the next step boundary and exits 143; running it again resumes). FLAGS are
any vdae.main flags; a later --mode=... replaces --mode=all.

  -c CONFIG   config file (default: the repository's configs/digits.py)
  -w WORKDIR  run directory (default runs/<config name>)
  PYTHON      environment variable: the interpreter (default: the repository's
              .venv/bin/python, which README's install makes, else python3)

example:
  launch/local.sh -c configs/tiny.py -w /tmp/tiny -- --config.stage1.num_steps=20
EOF2
}

config=""
workdir=""
while getopts ":c:w:h" opt; do
  case "$opt" in
    c) config="$OPTARG" ;;
    w) workdir="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
# Relative paths stay relative to the caller's directory; the repository
# root goes on PYTHONPATH so vdae and configs import from anywhere.
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
config="${config:-$root/configs/digits.py}"
name="$(basename "$config" .py)"
workdir="${workdir:-runs/$name}"
[[ -x "$root/.venv/bin/python" ]] && default_python="$root/.venv/bin/python" || default_python=python3
exec "${PYTHON:-$default_python}" -m vdae.main --config="$config" --workdir="$workdir" --mode=all "$@"
