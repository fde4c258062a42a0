#!/usr/bin/env bash
# README command 1: create/reuse .venv and run the whole story end to end on built-in data
# (see `python -m training.main_job --help`; extra args are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m training.main_job "$@"
