#!/usr/bin/env bash
# The main job on one machine: starts a local noida-db broker, creates the
# `onceflow` database, writes EVENTS ad events (3 % invalid, 5 % repeats)
# over 3 partitions, and runs `onceflow run` against them until Ctrl-C.
# Metrics: http://127.0.0.1:9464/metrics
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/dev-env.sh"
cd "$repo_root"

broker_port="${BROKER_PORT:-19092}"
events="${EVENTS:-20000}"
data_dir="$repo_root/target/noida-data"
export ONCEFLOW_KAFKA_BROKERS="127.0.0.1:$broker_port"
export ONCEFLOW_DATABASE_URL="${ONCEFLOW_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/onceflow}"
export ONCEFLOW_INSTANCE_ID="${ONCEFLOW_INSTANCE_ID:-local-1}"

cargo build --release --quiet
mkdir -p "$data_dir"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null; then
  echo "starting noida-db on 127.0.0.1:$broker_port" >&2
  "$NOIDA_DB" start --only kafka --host 127.0.0.1 --kafka-port "$broker_port" \
    --data-dir "$data_dir" >"$data_dir/noida.log" 2>&1 &
  broker_pid=$!
  trap 'kill $broker_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null && break; sleep 0.2; done
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'onceflow'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE onceflow"

./target/release/onceflow produce --count "$events" --partitions 3 --manifest target/manifest.json >/dev/null
echo "wrote $events events; ground truth in target/manifest.json; running onceflow (Ctrl-C stops it)" >&2
./target/release/onceflow run
