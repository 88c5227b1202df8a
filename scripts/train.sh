#!/usr/bin/env bash
# Pre-training launch in upstream Baichuan-7B's style: DeepSpeed's launcher over config/hostfile,
# DeepSpeed settings from config/deepspeed.json, everything else as `baichuan train` flags:
#
#   bash scripts/train.sh --data shards/ --tokenizer tokenizer.model --output-dir runs/7b --model 7b
#
# HOSTFILE (default config/hostfile), DS_CONFIG (default config/deepspeed.json) and PYTHON (default
# python3) may be set in the environment; extra DeepSpeed launcher flags go in DS_LAUNCH_ARGS
# (e.g. DS_LAUNCH_ARGS="--force_multi" for pdsh across hosts, or "--include localhost:0,1").
# Fault tolerance (docs/training.md, Failures and recovery): add e.g. `--max-restarts 3` to relaunch
# every rank from the newest verified checkpoint when one fails or hangs; run this script on the
# first node, with --output-dir on a filesystem shared by every host.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"   # paths in "$@" stay relative to the caller's directory
HOSTFILE="${HOSTFILE:-$ROOT/config/hostfile}"
DS_CONFIG="${DS_CONFIG:-$ROOT/config/deepspeed.json}"
PYTHON="${PYTHON:-python3}"
# Fail early, with the file named, instead of DeepSpeed's "will proceed with local resources only".
"$PYTHON" -c 'import sys; from baichuan.launch import parse_hostfile, LaunchError
try:
    hosts = parse_hostfile(sys.argv[1])
except LaunchError as e:
    sys.exit(f"train.sh: error: {e}")
print(f"train.sh: {len(hosts)} host(s), {sum(hosts.values())} slot(s) from {sys.argv[1]}", file=sys.stderr)' "$HOSTFILE"
# `baichuan train --hostfile` runs DeepSpeed's launcher (with $PYTHON, so every rank uses the
# interpreter that has this package; a hostfile naming only this machine needs no ssh) after checking
# the flags, the data and the run directory, and stops every rank on SIGTERM or Ctrl-C.
exec "$PYTHON" -m baichuan train --hostfile "$HOSTFILE" --deepspeed-config "$DS_CONFIG" \
    "--launcher-args=${DS_LAUNCH_ARGS:-}" "$@"
