#!/usr/bin/env bash
# Shared by run-local.sh and test.sh: makes sure what onceflow's runs and
# tests need is here, on a fresh machine too. Idempotent; safe to source
# more than once.
#  - OpenSSL's headers and pkg-config (the build links OpenSSL for TLS)
#  - the PostgreSQL server and client from Debian's packages, a cluster
#    started on 127.0.0.1:5432, trust on loopback for the test user
#    `postgres`, and the database `test` the harness connects to
#  - Java 17 and Maven from Debian's packages, and the jars of Apache Kafka
#    from Maven Central, cached once (scripts/kafka-cluster.sh fetch): the
#    tests run a real three-node Kafka cluster
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

# Debian's packages, installed only when missing (one `apt-get update` first).
need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
# OpenSSL for the TLS of librdkafka and of the PostgreSQL client.
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]}" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The newest installed server version, and its `main` cluster (the package
# creates it; a machine where it was dropped gets a new one).
pg_version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
if [ ! -d "/etc/postgresql/$pg_version/main" ]; then
  echo "creating PostgreSQL $pg_version cluster main" >&2
  $sudo_cmd pg_createcluster "$pg_version" main --port 5432 >/dev/null
fi
pg_conf_dir="/etc/postgresql/$pg_version/main"

# Trust on loopback for the test user, ahead of any other rule: the harness
# connects as postgres@127.0.0.1 without a password and creates one database
# per test. Only loopback: nothing else can connect this way.
hba="$pg_conf_dir/pg_hba.conf"
marker="# onceflow tests: trust on loopback"
if ! grep -qF "$marker" "$hba"; then
  echo "allowing trust on loopback for user postgres in $hba" >&2
  tmp="$(mktemp)"
  {
    echo "$marker"
    echo "host    all    postgres    127.0.0.1/32    trust"
    echo "host    all    postgres    ::1/128         trust"
    cat "$hba"
  } >"$tmp"
  $sudo_cmd install -m 640 -o postgres -g postgres "$tmp" "$hba"
  rm -f "$tmp"
  pg_reload=1
fi

# Enough connections for parallel tests (each pipeline keeps a pool).
conf_snippet="$pg_conf_dir/conf.d/onceflow-tests.conf"
if [ ! -f "$conf_snippet" ]; then
  printf 'max_connections = 400\nlisten_addresses = %s\n' "'localhost'" | $sudo_cmd tee "$conf_snippet" >/dev/null
  pg_restart=1
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL $pg_version" >&2
  $sudo_cmd pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start || true
elif [ -n "${pg_restart:-}" ]; then
  $sudo_cmd pg_ctlcluster --skip-systemctl-redirect "$pg_version" main restart
elif [ -n "${pg_reload:-}" ]; then
  $sudo_cmd pg_ctlcluster --skip-systemctl-redirect "$pg_version" main reload
fi
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
# A reload takes effect asynchronously: wait until trust is in force.
for _ in $(seq 1 30); do
  psql -w -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1 && break
  sleep 0.2
done
psql -w -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null \
  || { echo "cannot connect as postgres@127.0.0.1 without a password (check $hba)" >&2; exit 1; }

# The database the harness connects to before it creates its own per test.
if ! psql -w -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql -w -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test"
fi

# Java, Maven and the Kafka jars (installed and fetched only when missing).
"$repo_root/scripts/kafka-cluster.sh" fetch >/dev/null
