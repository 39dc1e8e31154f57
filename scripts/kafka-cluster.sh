#!/usr/bin/env bash
# kafka-cluster.sh: a real Apache Kafka cluster of three KRaft nodes on
# 127.0.0.1, for developers and for onceflow's test harness.
#
# The broker comes from Maven Central (no Docker, no release tarball):
# scripts/kafka/pom.xml names org.apache.kafka:kafka_2.13 and log4j2's SLF4J
# 1.x binding, and `fetch` copies that runtime classpath into
#   ${ONCEFLOW_KAFKA_CACHE:-$HOME/.cache/onceflow}/kafka-<version>/libs
# once (Maven's own repository is ~/.m2 as usual). Java 17+ and Maven are
# installed from Debian's packages when missing.
#
# Usage:
#   kafka-cluster.sh fetch                         prints the libs dir
#   kafka-cluster.sh start [--dir D] [--base-port P]
#   kafka-cluster.sh start-node N [--dir D]
#   kafka-cluster.sh stop [--dir D]
#   kafka-cluster.sh stop-node N [--dir D]
#   kafka-cluster.sh status [--dir D]
#   kafka-cluster.sh bootstrap [--dir D]
#   kafka-cluster.sh admin COMMAND ARGS...      scripts/kafka/ClusterAdmin.java
# D defaults to $ONCEFLOW_KAFKA_DIR, else ${TMPDIR:-/tmp}/onceflow-kafka;
# P to $ONCEFLOW_KAFKA_BASE_PORT, else the port the cluster in D was created
# with, else 19092. Versions: ONCEFLOW_KAFKA_VERSION (4.1.1) and
# ONCEFLOW_KAFKA_LOG4J_VERSION (the one that Kafka release uses). Extra JVM
# options: ONCEFLOW_KAFKA_JVM_OPTS (appended, so they win). Extra broker
# settings: ONCEFLOW_KAFKA_SERVER_PROPERTIES, key=value lines appended to
# each node's server.properties when `start` writes it (later lines win),
# e.g. broker.session.timeout.ms=4000 to fence a dead node sooner. Per
# node: D/node-N/extra.properties, if the caller wrote it, is appended last
# at every start of node N (extra listeners, for example).
#
# Layout and ports: node N (1..3) is broker and controller in one JVM, in
# D/node-N (server.properties, data/, server.log, stdout.log, pid). It
# serves clients on 127.0.0.1:P+N-1 and the controller quorum (static
# voters 1,2,3) on 127.0.0.1:P+2+N, so a cluster takes the ports P..P+5.
# Nothing listens on any other address.
# Topics default to 3 partitions, replication factor 3, min.insync.replicas
# 2; so are the offsets and transaction state topics (6 partitions each),
# and unclean leader election is off: with acks=all a write survives any
# one node's loss, and one node can be down while writes go on.
#
# Guarantees:
#  - `fetch` never takes an interrupted fetch for a complete one (it copies
#    into a temporary dir and renames it; the stamp inside names the POM
#    and versions that made it, and a different one fetches again).
#    Concurrent fetches wait for each other, and so do start and start-node
#    on one D (flock; at most ONCEFLOW_KAFKA_LOCK_TIMEOUT=300 s, then an
#    error naming the holders).
#  - `start` returns 0 only once every node is alive and its server.log has
#    said "Kafka Server started" since the node's latest start (in KRaft
#    that is after the node caught up with the metadata and was unfenced);
#    its last line on stdout is the bootstrap string
#    127.0.0.1:P,127.0.0.1:P+1,127.0.0.1:P+2. Nodes already running are
#    left alone, so `start` is idempotent. On failure (a node died, a port
#    was taken, 90 s passed: ONCEFLOW_KAFKA_START_TIMEOUT) it exits non-zero
#    with the tail of the node's logs on stderr, after stopping the nodes
#    that this call started.
#  - Each node is its own JVM in its own session (setsid), outliving the
#    script, with stdin from /dev/null and stdout/stderr into its
#    stdout.log (so a caller that reads the script's output through a pipe
#    is never held open by a broker). D/node-N/pid is the JVM's own pid.
#  - The cluster id is made once per D (D/cluster-id), each node's storage
#    is formatted once; `start` on an existing D restarts that cluster with
#    its data. A D created with one base port refuses another.
#  - `stop` sends SIGTERM to every node at once, waits up to 30 s
#    (ONCEFLOW_KAFKA_STOP_TIMEOUT), then SIGKILLs what is left and removes
#    the pid files. No command signals or reports a pid unless its command
#    line is kafka.Kafka with this node's server.properties (pid reuse).
#  - `start-node N` starts a stopped or killed node again from its config
#    and waits as `start` does, looking only at log lines written after it.
#    A node that is still running is left as it is (a SIGSTOPped one too,
#    but then start and start-node fail, saying so).
#  - `status` prints one line per node: up, starting, stopped (SIGSTOP) or
#    down, with pid and ports; it exits 0 only if all three are up.
#  - Logs: server.log (INFO, noisy loggers at WARN; scripts/kafka/log4j2.yaml)
#    rolls at 50 MB keeping two old files.
#  - `admin` runs scripts/kafka/ClusterAdmin.java (Kafka's Admin API: leader
#    placement and moves, coordinators; its header says the commands),
#    compiled once per version of the source against the broker's jars. Its
#    stdout is the tool's alone; client log lines of WARN and above, if any,
#    go to stderr.
#  - Start-up cost: the first `start` on a machine also makes a class-data
#    archive of the broker's classes (below, ~2 s once); later JVMs map it.
#
# The data and logs stay in D after `stop`; remove D for a fresh cluster.
#
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$script_dir/kafka/pom.xml"
log4j_conf="$script_dir/kafka/log4j2.yaml"

kafka_version="${ONCEFLOW_KAFKA_VERSION:-4.1.1}"
case "$kafka_version" in
  4.0.* | 4.1.*) default_log4j=2.24.3 ;;
  *) default_log4j=2.25.3 ;;
esac
log4j_version="${ONCEFLOW_KAFKA_LOG4J_VERSION:-$default_log4j}"
cache_root="${ONCEFLOW_KAFKA_CACHE:-${HOME:-/root}/.cache/onceflow}"
kafka_home="$cache_root/kafka-$kafka_version"
libs="$kafka_home/libs"
start_timeout="${ONCEFLOW_KAFKA_START_TIMEOUT:-90}"
stop_timeout="${ONCEFLOW_KAFKA_STOP_TIMEOUT:-30}"
nodes=(1 2 3)
host=127.0.0.1

# JVM options: a small heap; the serial collector and C1 only. Measured on
# two cores, restarting a three-node cluster (time until all three said
# "Kafka Server started"; CPU the three JVMs spent until then): Kafka's own
# G1 + C2 6.7-7.0 s, 11.7-12.0 s CPU; serial + C2 6.4-6.6 s; C1 only 4.0-4.2 s,
# 6.8 s CPU, with G1 or serial alike, but serial leaves ~150 MB RSS per idle
# node where G1 leaves ~175-225 MB. The class-data archive (below) then takes
# a restart to 2.5-3.2 s and 4.0-5.1 s CPU.
jvm_opts=(
  -Xms64m -Xmx512m
  -XX:+UseSerialGC
  -XX:TieredStopAtLevel=1
  -XX:-UsePerfData
  -Djava.awt.headless=true
  -Djava.net.preferIPv4Stack=true
)

die() {
  echo "kafka-cluster: $*" >&2
  exit 1
}
say() { echo "kafka-cluster: $*" >&2; }

usage() {
  sed -n '/^# Usage:/,/^#$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# --- tools ---------------------------------------------------------------

java_major() {
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1
}

# Java (17+) always; Maven only with the argument "mvn" (to fetch).
ensure_tools() {
  local need=()
  command -v java >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
  if [ "${1:-}" = mvn ]; then command -v mvn >/dev/null 2>&1 || need+=(maven); fi
  if ((${#need[@]})); then
    local sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    say "installing ${need[*]}"
    $sudo_cmd apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >&2
  fi
  [ -n "${java_bin:-}" ] && return 0
  java_bin="$(command -v java)"
  local major
  major="$(java_major "$java_bin")"
  if [ -z "$major" ] || [ "$major" -lt 17 ]; then
    local j
    for j in /usr/lib/jvm/*/bin/java; do
      [ -x "$j" ] || continue
      major="$(java_major "$j")"
      if [ -n "$major" ] && [ "$major" -ge 17 ]; then
        java_bin="$j"
        break
      fi
    done
    major="$(java_major "$java_bin")"
    if [ -z "$major" ] || [ "$major" -lt 17 ]; then
      die "Kafka $kafka_version needs Java 17 or newer; $java_bin is ${major:-unknown} (apt-get install openjdk-17-jdk-headless)"
    fi
  fi
  java_bin="$(readlink -f "$java_bin")"
}

# --- fetch ---------------------------------------------------------------

fetch_stamp() {
  { cat "$pom"; echo "kafka=$kafka_version log4j=$log4j_version"; } | sha256sum | cut -d' ' -f1
}

libs_complete() {
  [ -f "$libs/.onceflow-fetched" ] && [ "$(cat "$libs/.onceflow-fetched")" = "$(fetch_stamp)" ]
}

cmd_fetch() {
  if libs_complete; then
    echo "$libs"
    return 0
  fi
  ensure_tools mvn
  mkdir -p "$kafka_home"
  exec 8>"$kafka_home/.fetch.lock"
  flock 8
  if ! libs_complete; then
    local tmp
    tmp="$(mktemp -d "$kafka_home/libs.tmp.XXXXXX")"
    say "fetching Kafka $kafka_version (log4j $log4j_version) from Maven Central into $libs"
    chmod 755 "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$pom" \
      -Dkafka.version="$kafka_version" -Dlog4j.version="$log4j_version" \
      dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g; /^[[:space:]]*$/d' >&2; then
      rm -rf "$tmp"
      die "mvn could not resolve org.apache.kafka:kafka_2.13:$kafka_version (see above)"
    fi
    ls "$tmp"/kafka_2.13-"$kafka_version".jar >/dev/null 2>&1 || {
      rm -rf "$tmp"
      die "the fetch brought no kafka_2.13-$kafka_version.jar"
    }
    fetch_stamp >"$tmp/.onceflow-fetched"
    if [ -e "$libs" ]; then
      # An older or partial set: replace it (running JVMs keep their open jars).
      mv "$libs" "$kafka_home/libs.old.$$"
      rm -rf "$kafka_home/libs.old.$$"
    fi
    mv "$tmp" "$libs"
    rm -rf "$kafka_home/cds" # archives of the old jars
  fi
  flock -u 8
  exec 8>&-
  echo "$libs"
}

# --- class-data sharing -----------------------------------------------------
#
# A dynamic AppCDS archive of the classes a started broker has loaded, made
# once per libs dir and JVM: the first `start` without one runs node 1 with
# -XX:+RecordDynamicDumpInfo and, once the cluster is up, has it dump the
# archive (jcmd VM.cds dynamic_dump, ~2 s) into a temporary file, which is
# only renamed into place after a JVM has loaded it with -Xshare:on (a
# truncated archive makes the JVM die of SIGBUS; a stale one, e.g. after a
# JDK update or with other jars, is only refused with a warning in
# stdout.log and the node starts without it). ONCEFLOW_KAFKA_CDS=0 turns
# this off.

cds_archive() {
  local key
  key="$({ echo "$java_bin"; "$java_bin" -version 2>&1; } | sha256sum | cut -c1-16)"
  echo "$kafka_home/cds/$key.jsa"
}

cds_file="" # set by cds_archive, once java_bin is known
cds_enabled() {
  [ "${ONCEFLOW_KAFKA_CDS:-1}" != 0 ] && [ -n "$cds_file" ] && [ ! -e "$cds_file.failed" ] &&
    command -v jcmd >/dev/null 2>&1
}

# Options for a node's JVM: use the archive, or (for the one node that will
# make it, "record") record what is needed to dump one.
cds_opts() {
  cds_enabled || return 0
  if [ -s "$cds_file" ]; then
    echo "-XX:SharedArchiveFile=$cds_file"
  elif [ "${1:-}" = record ]; then
    echo "-XX:+RecordDynamicDumpInfo"
  fi
}

# Dumps the archive from the running node 1 started with "record". Never fatal.
cds_dump() {
  local pid="$1" tmp
  mkdir -p "$(dirname "$cds_file")"
  exec 7>"$(dirname "$cds_file")/.lock"
  if ! flock -n 7; then
    exec 7>&-
    return 0 # another start is making it
  fi
  if [ ! -s "$cds_file" ]; then
    tmp="$cds_file.tmp.$$"
    rm -f "$tmp"
    if timeout 60 jcmd "$pid" VM.cds dynamic_dump "$tmp" >/dev/null 2>&1 && [ -s "$tmp" ] &&
      "$java_bin" -Xshare:on -XX:SharedArchiveFile="$tmp" "${jvm_opts[@]}" \
        -XX:ErrorFile="$tmp.hs_err_pid%p.log" \
        -cp "$libs/*" kafka.tools.StorageTool random-uuid >/dev/null 2>&1; then
      mv "$tmp" "$cds_file"
      say "made the class-data archive $cds_file (later starts use it)"
    else
      # Not tried again for this JVM and these jars (remove the file to retry).
      : >"$cds_file.failed"
      say "could not make a class-data archive (nodes start without one; see $cds_file.failed)"
    fi
    rm -f "$tmp" "$tmp".hs_err_pid*.log
  fi
  flock -u 7
  exec 7>&-
}

# --- cluster layout --------------------------------------------------------

dir="${ONCEFLOW_KAFKA_DIR:-${TMPDIR:-/tmp}/onceflow-kafka}"
base_port_arg="${ONCEFLOW_KAFKA_BASE_PORT:-}"

node_dir() { echo "$dir/node-$1"; }
broker_port() { echo $((base_port + $1 - 1)); }
controller_port() { echo $((base_port + 2 + $1)); }

load_base_port() {
  local stored=""
  [ -f "$dir/base-port" ] && stored="$(cat "$dir/base-port")"
  if [ -n "$base_port_arg" ]; then
    if ! [[ "$base_port_arg" =~ ^[0-9]+$ ]] || ((base_port_arg < 1024 || base_port_arg > 65530)); then
      die "bad base port: $base_port_arg"
    fi
    if [ -n "$stored" ] && [ "$stored" != "$base_port_arg" ]; then
      die "$dir holds a cluster made with base port $stored, not $base_port_arg (stop it and remove $dir to change it)"
    fi
    base_port="$base_port_arg"
  else
    base_port="${stored:-19092}"
  fi
}

bootstrap_string() {
  echo "$host:$base_port,$host:$((base_port + 1)),$host:$((base_port + 2))"
}

voters() {
  local n out=""
  for n in "${nodes[@]}"; do
    out+="${out:+,}$n@$host:$(controller_port "$n")"
  done
  echo "$out"
}

write_config() {
  local n="$1" nd
  nd="$(node_dir "$n")"
  mkdir -p "$nd/data"
  local b c
  b="$(broker_port "$n")"
  c="$(controller_port "$n")"
  cat >"$nd/server.properties.tmp" <<EOF
# Written by scripts/kafka-cluster.sh (rewritten at each start).
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://$host:$b,CONTROLLER://$host:$c
advertised.listeners=PLAINTEXT://$host:$b
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$nd/data

# Durability: every topic on all three nodes, writes need two.
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
share.coordinator.state.topic.num.partitions=3
unclean.leader.election.enable=false
auto.leader.rebalance.enable=false

# Fast to start, light on two cores and three JVMs.
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=2097152
log.index.size.max.bytes=1048576
EOF
  if [ -n "${ONCEFLOW_KAFKA_SERVER_PROPERTIES:-}" ]; then
    printf '\n# From ONCEFLOW_KAFKA_SERVER_PROPERTIES (later lines win).\n%s\n' \
      "$ONCEFLOW_KAFKA_SERVER_PROPERTIES" >>"$nd/server.properties.tmp"
  fi
  # A node's own additions, written by the caller before `start` and kept
  # across restarts (the harness adds listeners this way: one reached
  # through its TCP proxies, a TLS or SASL one). Last, so they win.
  if [ -f "$nd/extra.properties" ]; then
    printf '\n# From %s (later lines win).\n' "$nd/extra.properties" >>"$nd/server.properties.tmp"
    cat "$nd/extra.properties" >>"$nd/server.properties.tmp"
  fi
  mv "$nd/server.properties.tmp" "$nd/server.properties"
}

new_cluster_id() {
  # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not
  # starting with '-' (what Uuid.randomUuid() also avoids).
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [ "${#id}" -eq 22 ] && [ "${id:0:1}" != "-" ] && break
  done
  echo "$id"
}

# --- processes -------------------------------------------------------------

# The pid of node N if it is running (its JVM, with its config), else nothing.
node_pid() {
  local n="$1" nd pid
  nd="$(node_dir "$n")"
  [ -f "$nd/pid" ] || return 0
  pid="$(cat "$nd/pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [ -r "/proc/$pid/cmdline" ] || return 0
  # The argument after kafka.Kafka, compared as a canonical path (a caller
  # may have spelled the dir with .. or a symlink).
  local conf
  conf="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n '/^kafka\.Kafka$/{n;p;q}' || true)"
  [ -n "$conf" ] && [ "$(realpath -m "$conf")" = "$nd/server.properties" ] && echo "$pid"
  return 0
}

proc_state() { # R, S, T (stopped), Z, ... of a pid
  sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null || true
}

port_busy() {
  (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null
}

# Lines of node N's server.log written since its latest start.
log_since_start() {
  local nd offset size
  nd="$(node_dir "$1")"
  [ -f "$nd/server.log" ] || return 0
  offset="$(cat "$nd/log-offset" 2>/dev/null || echo 0)"
  size="$(stat -c %s "$nd/server.log")"
  ((size >= offset)) || offset=0 # the log rolled over since
  tail -c +"$((offset + 1))" "$nd/server.log"
}

node_started() {
  # grep -c reads all its input: grep -q would stop early, tail would die of
  # SIGPIPE and pipefail would call the line missing.
  [ "$(log_since_start "$1" | grep -cF "Kafka Server started")" -gt 0 ]
}

launch_node() {
  local n="$1" nd extra=()
  nd="$(node_dir "$n")"
  read -r -a extra <<<"$(cds_opts "${2:-}")"
  local p
  for p in "$(broker_port "$n")" "$(controller_port "$n")"; do
    if port_busy "$p"; then
      die "node $n: $host:$p is already in use (another cluster or process on these ports?)"
    fi
  done
  local size=0
  [ -f "$nd/server.log" ] && size="$(stat -c %s "$nd/server.log")"
  echo "$size" >"$nd/log-offset"
  rm -f "$nd/pid"
  # The child closes every descriptor above 2 (our locks, and any lock or
  # pipe the caller had open, e.g. a `flock FILE kafka-cluster.sh start`:
  # a broker holding it would hold it for its whole life), writes its own
  # pid, then execs java: the pid is the JVM's.
  # Its working directory is the node's dir (where a crash report, if any,
  # lands too), not the caller's.
  # shellcheck disable=SC2016,SC2086 # the child expands $$; JVM_OPTS are words
  setsid nohup bash -c '
    for fd in /proc/$$/fd/*; do
      fd="${fd##*/}"
      ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
    done
    cd "$2" || exit 1
    echo $$ >"$1"
    shift 2
    exec "$@"' launch "$nd/pid" "$nd" \
    "$java_bin" "${jvm_opts[@]}" "${extra[@]}" -XX:ErrorFile="$nd/hs_err_pid%p.log" \
    ${ONCEFLOW_KAFKA_JVM_OPTS:-} \
    -Dkafka.logs.dir="$nd" -Dlog4j2.configurationFile="$log4j_conf" \
    -cp "$libs/*" kafka.Kafka "$nd/server.properties" \
    </dev/null >"$nd/stdout.log" 2>&1 &
  local i
  for i in $(seq 1 100); do
    [ -s "$nd/pid" ] && break
    sleep 0.05
  done
  [ -s "$nd/pid" ] || die "node $n: no pid written"
  started_here+=("$n")
}

show_logs() {
  local n="$1" nd
  nd="$(node_dir "$n")"
  {
    echo "--- $nd/stdout.log (tail) ---"
    tail -n 20 "$nd/stdout.log" 2>/dev/null || true
    echo "--- $nd/server.log since this start (tail) ---"
    log_since_start "$n" | tail -n 40
  } >&2
}

# Waits until every node in "$@" is alive and has started since its launch.
wait_started() {
  local deadline=$((SECONDS + start_timeout)) n pending
  while :; do
    pending=()
    for n in "$@"; do
      if [ -z "$(node_pid "$n")" ]; then
        say "node $n died while starting"
        show_logs "$n"
        return 1
      fi
      node_started "$n" || pending+=("$n")
    done
    ((${#pending[@]})) || return 0
    if ((SECONDS >= deadline)); then
      say "timed out after ${start_timeout}s waiting for node(s) ${pending[*]} to log 'Kafka Server started'"
      for n in "${pending[@]}"; do show_logs "$n"; done
      return 1
    fi
    sleep 0.2
  done
}

# SIGTERM to the nodes given, SIGKILL to what is left after the timeout.
stop_nodes() {
  local n pid pids=() left
  for n in "$@"; do
    pid="$(node_pid "$n")"
    if [ -n "$pid" ]; then
      # A SIGSTOPped JVM must run again to shut down.
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$n:$pid")
    fi
  done
  local deadline=$((SECONDS + stop_timeout))
  while :; do
    left=()
    for n in "${pids[@]}"; do
      kill -0 "${n#*:}" 2>/dev/null && [ "$(proc_state "${n#*:}")" != Z ] && left+=("$n")
    done
    ((${#left[@]})) || break
    if ((SECONDS >= deadline)); then
      for n in "${left[@]}"; do
        say "node ${n%%:*} (pid ${n#*:}) did not stop in ${stop_timeout}s: SIGKILL"
        kill -KILL "${n#*:}" 2>/dev/null || true
      done
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  for n in "$@"; do rm -f "$(node_dir "$n")/pid"; done
}

# EXIT trap of start and start-node: when they fail (die, timeout, Ctrl-C),
# the nodes that this call launched are stopped, not left half-started.
started_here=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup_failed_start() {
  local rc=$?
  if ((${#started_here[@]})); then
    say "start failed; stopping the node(s) it launched: ${started_here[*]}"
    stop_nodes "${started_here[@]}"
  fi
  exit "$rc"
}

# A running node that was SIGSTOPped is neither restarted nor called up.
check_not_frozen() {
  local pid
  pid="$(node_pid "$1")"
  if [ -n "$pid" ] && [ "$(proc_state "$pid")" = T ]; then
    die "node $1 (pid $pid) is stopped (SIGSTOP): kill -CONT $pid, or stop-node $1 first"
  fi
}

# Serialises start and start-node on one cluster dir (fd 9). (Named
# .start.lock: brokers launched by the first version of this script
# inherited fd 9 on D/.lock and hold that file locked for their life.)
lock_dir() {
  mkdir -p "$dir"
  exec 9>"$dir/.start.lock"
  if ! flock -w "${ONCEFLOW_KAFKA_LOCK_TIMEOUT:-300}" 9; then
    local holders="" f
    for f in /proc/[0-9]*/fd/*; do
      [[ "$f" == "/proc/$$/"* ]] && continue
      [ "$(readlink "$f" 2>/dev/null)" = "$dir/.start.lock" ] && holders+=" $(cut -d/ -f3 <<<"$f")"
    done
    die "$dir/.start.lock is still held after ${ONCEFLOW_KAFKA_LOCK_TIMEOUT:-300}s, by pid(s):${holders:- unknown}"
  fi
}

check_node_arg() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3, not '${1:-}'"
}

# --- commands --------------------------------------------------------------

cmd_start() {
  load_base_port
  cmd_fetch >/dev/null
  ensure_tools
  lock_dir
  local cluster_id n nd p
  started_here=()
  for n in "${nodes[@]}"; do
    [ -n "$(node_pid "$n")" ] && continue
    for p in "$(broker_port "$n")" "$(controller_port "$n")"; do
      port_busy "$p" && die "node $n: $host:$p is already in use (another cluster or process on these ports?)"
    done
  done
  [ -f "$dir/base-port" ] || echo "$base_port" >"$dir/base-port"
  [ -f "$dir/cluster-id" ] || new_cluster_id >"$dir/cluster-id"
  cluster_id="$(cat "$dir/cluster-id")"
  for n in "${nodes[@]}"; do
    write_config "$n"
  done
  # Format each node's storage once (in parallel: three short JVMs).
  cds_file="$(cds_archive)"
  local fmt_pids=() fmt_nodes=() fmt_opts=()
  read -r -a fmt_opts <<<"$(cds_opts)"
  for n in "${nodes[@]}"; do
    nd="$(node_dir "$n")"
    [ -f "$nd/data/meta.properties" ] && continue
    "$java_bin" "${jvm_opts[@]}" "${fmt_opts[@]}" -XX:ErrorFile="$nd/hs_err_pid%p.log" \
      -Dlog4j2.configurationFile="$log4j_conf" -Dkafka.logs.dir="$nd" \
      -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$nd/server.properties" --ignore-formatted </dev/null >"$nd/format.log" 2>&1 8>&- 9>&- &
    fmt_pids+=($!)
    fmt_nodes+=("$n")
  done
  local i
  for i in "${!fmt_pids[@]}"; do
    if ! wait "${fmt_pids[$i]}"; then
      nd="$(node_dir "${fmt_nodes[$i]}")"
      cat "$nd/format.log" >&2
      die "node ${fmt_nodes[$i]}: formatting $nd/data failed"
    fi
  done
  trap cleanup_failed_start EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local recorder=""
  for n in "${nodes[@]}"; do
    if [ -n "$(node_pid "$n")" ]; then
      say "node $n already running (pid $(node_pid "$n"))"
      check_not_frozen "$n"
    elif [ -z "$recorder" ] && cds_enabled && [ ! -s "$cds_file" ]; then
      recorder="$n"
      launch_node "$n" record
    else
      launch_node "$n"
    fi
  done
  wait_started "${nodes[@]}" || exit 1 # the EXIT trap stops what this call started
  trap - EXIT
  [ -n "$recorder" ] && cds_dump "$(node_pid "$recorder")"
  say "cluster in $dir up: brokers $(bootstrap_string), controllers $host:$((base_port + 3))-$((base_port + 5))"
  bootstrap_string
}

cmd_start_node() {
  local n="$1"
  load_base_port
  [ -f "$(node_dir "$n")/server.properties" ] || die "no node $n in $dir: run start first"
  [ -f "$(node_dir "$n")/data/meta.properties" ] || die "node $n in $dir was never formatted: run start"
  cmd_fetch >/dev/null
  ensure_tools
  lock_dir
  started_here=()
  if [ -n "$(node_pid "$n")" ]; then
    say "node $n already running (pid $(node_pid "$n"))"
    check_not_frozen "$n"
  else
    trap cleanup_failed_start EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    cds_file="$(cds_archive)"
    launch_node "$n"
  fi
  wait_started "$n" || exit 1
  trap - EXIT
  say "node $n up (pid $(node_pid "$n")) on $host:$(broker_port "$n")"
}

cmd_stop() {
  load_base_port
  [ -d "$dir" ] || return 0
  stop_nodes "$@"
}

cmd_status() {
  load_base_port
  local n pid state all_up=0
  for n in "${nodes[@]}"; do
    pid="$(node_pid "$n")"
    if [ -z "$pid" ]; then
      state=down
      all_up=1
    elif [ "$(proc_state "$pid")" = T ]; then
      state="stopped(SIGSTOP)"
      all_up=1
    elif node_started "$n"; then
      state=up
    else
      state=starting
      all_up=1
    fi
    printf 'node %s: %-16s pid %-8s broker %s:%s controller %s:%s\n' \
      "$n" "$state" "${pid:--}" "$host" "$(broker_port "$n")" "$host" "$(controller_port "$n")"
  done
  return "$all_up"
}

cmd_admin() {
  cmd_fetch >/dev/null
  ensure_tools
  local src="$script_dir/kafka/ClusterAdmin.java" javac_bin key classes tmp
  [ -f "$src" ] || die "no $src"
  javac_bin="$(dirname "$java_bin")/javac"
  key="$(sha256sum <"$src" | cut -c1-16)"
  classes="$kafka_home/admin/$key"
  if [ ! -f "$classes/ClusterAdmin.class" ]; then
    [ -x "$javac_bin" ] || die "admin needs javac next to $java_bin (apt-get install openjdk-17-jdk-headless)"
    mkdir -p "$kafka_home/admin"
    exec 6>"$kafka_home/admin/.lock"
    flock 6
    if [ ! -f "$classes/ClusterAdmin.class" ]; then
      tmp="$(mktemp -d "$kafka_home/admin/tmp.XXXXXX")"
      chmod 755 "$tmp"
      if ! "$javac_bin" -nowarn -cp "$libs/*" -d "$tmp" "$src" >&2; then
        rm -rf "$tmp"
        die "could not compile $src"
      fi
      rm -rf "$classes"
      mv "$tmp" "$classes"
    fi
    flock -u 6
    exec 6>&-
  fi
  # log4j-api's simple logger to stderr instead of log4j-core's file config.
  exec "$java_bin" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
    -XX:ErrorFile="$kafka_home/admin/hs_err_pid%p.log" \
    -Dlog4j2.loggerContextFactory=org.apache.logging.log4j.simple.SimpleLoggerContextFactory \
    -Dlog4j2.simplelogLevel=WARN -Dlog4j2.simplelogLogFile=system.err \
    -cp "$classes:$libs/*" ClusterAdmin "$@"
}

# --- arguments -------------------------------------------------------------

main() {
  local cmd="${1:-}" node_arg=""
  [ -n "$cmd" ] || usage
  shift
  if [ "$cmd" = admin ]; then
    cmd_admin "$@" # its arguments are the tool's
  fi
  case "$cmd" in
    start-node | stop-node)
      node_arg="${1:-}"
      check_node_arg "$node_arg"
      shift
      ;;
  esac
  while (($#)); do
    case "$1" in
      --dir)
        [ -n "${2:-}" ] || die "--dir needs a value"
        dir="$2"
        shift 2
        ;;
      --dir=*)
        dir="${1#--dir=}"
        shift
        ;;
      --base-port)
        [ -n "${2:-}" ] || die "--base-port needs a value"
        base_port_arg="$2"
        shift 2
        ;;
      --base-port=*)
        base_port_arg="${1#--base-port=}"
        shift
        ;;
      -h | --help) usage ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  dir="$(realpath -m "$dir")"

  case "$cmd" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    start-node) cmd_start_node "$node_arg" ;;
    stop) cmd_stop "${nodes[@]}" ;;
    stop-node) cmd_stop "$node_arg" ;;
    status) cmd_status ;;
    bootstrap)
      load_base_port
      bootstrap_string
      ;;
    -h | --help | help) usage ;;
    *) die "unknown command: $cmd" ;;
  esac
}

# On one line: bash never reads past it, even if this file is rewritten
# while a call (e.g. one waiting for the lock) is running.
main "$@"; exit $?
