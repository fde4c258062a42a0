#!/usr/bin/env bash
# README command 2: create/reuse .venv and run the whole test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# DDS discovery stays on loopback; each run gets its own domain (conftest refines per process).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# pytest exits 5 when it collected no tests; set -e turns that into a failure too.
exec .venv/bin/python -m pytest -ra "$@"
