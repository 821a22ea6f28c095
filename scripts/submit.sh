#!/usr/bin/env bash
# Submit `autosparse run CONFIG` to the local cluster (scripts/local-cluster-up.sh).
#
#   scripts/submit.sh [--no-wait] [CONFIG] [EXTRA AUTOSPARSE ARGS...]
#   scripts/submit.sh quickstart                 # stream logs until the job ends
#   scripts/submit.sh --no-wait smoke            # print the job id and return
#
# Prints the job id (follow it with scripts/logs.sh JOB_ID). The runtime env is
# clusters/runtime_env.yaml (working_dir ".", excludes) with the local MLflow server and
# workspace filled in. Environment: RAY_JOB_ADDRESS (http://127.0.0.1:8265), MLFLOW_PORT,
# MLFLOW_TRACKING_URI, AUTOSPARSE_WORKSPACE (as for local-cluster-up.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
if [[ -x $root/.venv/bin/ray ]]; then export PATH="$root/.venv/bin:$PATH"; fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true

no_wait=()
args=()
for arg in "$@"; do
  case $arg in
    --no-wait) no_wait=(--no-wait) ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) args+=("$arg") ;;
  esac
done
config=${args[0]:-quickstart}
extra=("${args[@]:1}")

address=${RAY_JOB_ADDRESS:-http://127.0.0.1:8265}
tracking_uri=${MLFLOW_TRACKING_URI:-http://127.0.0.1:${MLFLOW_PORT:-5000}}
workspace=${AUTOSPARSE_WORKSPACE:-$root/autosparse-workspace}
case $workspace in
  *://* | /*) ;;  # a shared-storage URI (s3://, gs://, ...) or an absolute path
  *) workspace=$root/$workspace ;;
esac

runtime_env_json=$(
  TRACKING_URI=$tracking_uri WORKSPACE=$workspace python - <<'PY'
import json, os, yaml
env = yaml.safe_load(open("clusters/runtime_env.yaml"))
env["env_vars"].update(MLFLOW_TRACKING_URI=os.environ["TRACKING_URI"],
                       AUTOSPARSE_WORKSPACE=os.environ["WORKSPACE"])
print(json.dumps(env))
PY
)

name=$(basename "$config" .yaml | tr -c 'A-Za-z0-9_\n-' '-')
job_id=autosparse-$name-$(date +%Y%m%d-%H%M%S)-$RANDOM
echo "job id: $job_id"
ray job submit --address "$address" --submission-id "$job_id" "${no_wait[@]}" \
  --working-dir . --runtime-env-json "$runtime_env_json" \
  -- autosparse run "$config" "${extra[@]}"
if ((${#no_wait[@]})); then
  echo "$job_id"
fi
