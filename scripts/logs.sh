#!/usr/bin/env bash
# Follow the logs of a Ray job until it ends:  scripts/logs.sh JOB_ID
# Environment: RAY_JOB_ADDRESS (http://127.0.0.1:8265).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if (($# != 1)); then
  echo "usage: $0 JOB_ID" >&2
  exit 2
fi
if [[ -x .venv/bin/ray ]]; then export PATH="$PWD/.venv/bin:$PATH"; fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
exec ray job logs --address "${RAY_JOB_ADDRESS:-http://127.0.0.1:8265}" --follow "$1"
