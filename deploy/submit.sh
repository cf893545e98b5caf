#!/usr/bin/env bash
# Batch submit: run an sn5dask YAML run config on a Dask cluster and return its exit code.
#
#   deploy/submit.sh run.yaml [extra `sn5dask run` flags...]
#
# Cluster: DASK_SCHEDULER_ADDRESS when set (an existing scheduler: dask-cloudprovider, the
# dask-kubernetes operator, Coiled, dask-gateway); else SN5DASK_WORKERS=N starts a fresh
# `dask scheduler` + N `dask worker` processes on this machine for the run and stops them
# afterwards; else `sn5dask run` starts its embedded LocalCluster.
# Progress streams to stderr, the summary table to stdout. Exit code: sn5dask's
# (0 ok, 1 some chips failed, 2 bad config / no chips / output locked / params changed).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
config=$1
shift
if [ ! -r "$config" ]; then
  echo "submit.sh: cannot read run config $config" >&2
  exit 2
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

if [ -z "${DASK_SCHEDULER_ADDRESS:-}" ] && [ -n "${SN5DASK_WORKERS:-}" ]; then
  port=${SN5DASK_SCHEDULER_PORT:-8786}
  host=${SN5DASK_SCHEDULER_HOST:-127.0.0.1}
  dask scheduler --host "$host" --port "$port" --dashboard-address :8787 >&2 &
  pids+=($!)
  export DASK_SCHEDULER_ADDRESS="tcp://$host:$port"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && break
    sleep 0.2
  done
  for _ in $(seq 1 "$SN5DASK_WORKERS"); do
    dask worker "$DASK_SCHEDULER_ADDRESS" --nthreads 1 --no-dashboard >&2 &
    pids+=($!)
  done
  echo "submit.sh: started a scheduler at $DASK_SCHEDULER_ADDRESS and $SN5DASK_WORKERS worker(s)" >&2
fi

if [ -n "${DASK_SCHEDULER_ADDRESS:-}" ]; then
  echo "submit.sh: running $config on $DASK_SCHEDULER_ADDRESS" >&2
else
  echo "submit.sh: running $config on a LocalCluster" >&2
fi
set +e
sn5dask run --config "$config" "$@"
status=$?
set -e
exit "$status"
