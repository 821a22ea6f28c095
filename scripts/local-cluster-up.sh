#!/usr/bin/env bash
# Start a local Ray head and an MLflow tracking server. MLflow and the Ray dashboard bind to
# 127.0.0.1; Ray 2.60 binds its other services to the machine's network address whatever
# --node-ip-address says, so their ports are pinned here for a firewall rule to close
# (clusters/README.md, "What the local cluster exposes").
# Idempotent: whatever is already running is left alone. Stop with scripts/local-cluster-down.sh.
#
#   NUM_CPUS=2 MLFLOW_PORT=5000 STATE_DIR=.local-cluster scripts/local-cluster-up.sh
#
# Environment (defaults): NUM_CPUS (2), MLFLOW_PORT (5000), RAY_PORT (6379, GCS; the head's
# other Ray services use RAY_PORT+1 to RAY_PORT+5), RAY_CLIENT_PORT (10001), WORKER_PORTS
# (10002-10999), DASHBOARD_PORT (8265), DASHBOARD_AGENT_PORT (52365), STATE_DIR (.local-cluster:
# MLflow SQLite DB, artifacts, logs, pid), AUTOSPARSE_WORKSPACE (./autosparse-workspace; a
# directory or an s3://, gs:// URI), MLFLOW_START_TIMEOUT (120 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

NUM_CPUS=${NUM_CPUS:-2}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
RAY_CLIENT_PORT=${RAY_CLIENT_PORT:-10001}
WORKER_PORTS=${WORKER_PORTS:-10002-10999}
DASHBOARD_AGENT_PORT=${DASHBOARD_AGENT_PORT:-52365}
MLFLOW_START_TIMEOUT=${MLFLOW_START_TIMEOUT:-120}
STATE_DIR=${STATE_DIR:-.local-cluster}
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
printf '*\n' >"$STATE_DIR/.gitignore"  # keep cluster state out of git
workspace=${AUTOSPARSE_WORKSPACE:-$root/autosparse-workspace}
case $workspace in
  *://* | /*) ;;  # a shared-storage URI (s3://, gs://, ...) or an absolute path
  *) workspace=$root/$workspace ;;
esac

# Use the project's virtualenv when present, so `ray`, `mlflow` and the jobs' `autosparse`
# all come from it (job drivers inherit the PATH of `ray start`).
if [[ -x $root/.venv/bin/ray ]]; then export PATH="$root/.venv/bin:$PATH"; fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
tracking_uri=http://127.0.0.1:$MLFLOW_PORT
pidfile=$STATE_DIR/mlflow.pid

# 1. MLflow, in its own session/process group (pid == pgid) so that
#    local-cluster-down.sh can stop it together with its gunicorn/uvicorn workers.
if [[ -s $pidfile ]] && kill -0 -- "-$(cat "$pidfile")" 2>/dev/null; then
  echo "MLflow already running (process group $(cat "$pidfile"))"
else
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE_DIR/mlflow.db" \
    --artifacts-destination "$STATE_DIR/mlartifacts" \
    >"$STATE_DIR/mlflow.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  echo "MLflow starting (process group $!, log $STATE_DIR/mlflow.log)"
fi

# 2. Ray head (meanwhile MLflow boots). The AUTOSPARSE_CLUSTER_* variables become part of
#    the node environment, which clusters/runtime_env.yaml expands for every job.
if curl -sf "http://127.0.0.1:$DASHBOARD_PORT/api/version" >/dev/null; then
  echo "Ray already running (dashboard http://127.0.0.1:$DASHBOARD_PORT)"
else
  RAY_HEAD_IP=127.0.0.1 \
    AUTOSPARSE_CLUSTER_MLFLOW_URI=$tracking_uri \
    AUTOSPARSE_CLUSTER_WORKSPACE=$workspace \
    ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --num-cpus="$NUM_CPUS" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --disable-usage-stats \
    --node-manager-port=$((RAY_PORT + 1)) --object-manager-port=$((RAY_PORT + 2)) \
    --runtime-env-agent-port=$((RAY_PORT + 3)) --dashboard-agent-grpc-port=$((RAY_PORT + 4)) \
    --metrics-export-port=$((RAY_PORT + 5)) --dashboard-agent-listen-port="$DASHBOARD_AGENT_PORT" \
    --ray-client-server-port="$RAY_CLIENT_PORT" \
    --min-worker-port="${WORKER_PORTS%-*}" --max-worker-port="${WORKER_PORTS#*-}"
fi

# 3. Wait (bounded) for MLflow to answer its health check.
deadline=$((SECONDS + MLFLOW_START_TIMEOUT))
until curl -sf "$tracking_uri/health" >/dev/null; do
  if ! kill -0 -- "-$(cat "$pidfile")" 2>/dev/null; then
    echo "MLflow exited during start-up; last log lines:" >&2
    tail -n 20 "$STATE_DIR/mlflow.log" >&2 || true
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "MLflow not healthy after ${MLFLOW_START_TIMEOUT}s; see $STATE_DIR/mlflow.log" >&2
    exit 1
  fi
  sleep 1
done

cat <<MSG
Local cluster up.
  Ray dashboard / job API: http://127.0.0.1:$DASHBOARD_PORT
  MLflow UI:               $tracking_uri
  Workspace:               $workspace
Submit:  scripts/submit.sh quickstart      Stop:  scripts/local-cluster-down.sh
Ray also listens on this machine's network address: TCP $RAY_PORT-$((RAY_PORT + 5)), $RAY_CLIENT_PORT (Ray Client,
which runs code for whoever reaches it), $WORKER_PORTS and $DASHBOARD_AGENT_PORT. Close them to other hosts:
  sudo iptables -I INPUT ! -i lo -p tcp -m multiport --dports $RAY_PORT:$((RAY_PORT + 5)),$RAY_CLIENT_PORT,${WORKER_PORTS/-/:},$DASHBOARD_AGENT_PORT -j DROP
MSG
