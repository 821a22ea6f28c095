#!/usr/bin/env bash
# Stop what scripts/local-cluster-up.sh started: the MLflow process group, then Ray.
# Idempotent. Note: `ray stop` stops every Ray node this user runs on this machine.
#   STATE_DIR (.local-cluster), STOP_TIMEOUT (20 s before SIGKILL)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STATE_DIR=${STATE_DIR:-.local-cluster}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
pidfile=$STATE_DIR/mlflow.pid
if [[ -x .venv/bin/ray ]]; then export PATH="$PWD/.venv/bin:$PATH"; fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

# MLflow: signal the whole process group (server + workers), escalate if needed.
if [[ -s $pidfile ]]; then
  pgid=$(cat "$pidfile")
  if kill -TERM -- "-$pgid" 2>/dev/null; then
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 -- "-$pgid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -KILL -- "-$pgid" 2>/dev/null; then echo "MLflow killed (SIGKILL)"; fi
    echo "MLflow stopped (process group $pgid)"
  fi
  rm -f "$pidfile"
else
  echo "MLflow not running (no $pidfile)"
fi

# Ray: `ray stop` is a no-op when nothing runs; --grace-period escalates to SIGKILL.
ray stop --grace-period "$STOP_TIMEOUT"
