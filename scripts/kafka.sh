#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, loopback only) for tests and local trials.
#
#   scripts/kafka.sh fetch            download the broker's jars from Maven Central (cached)
#   scripts/kafka.sh start            fetch if needed, format once, start, wait until it serves
#   scripts/kafka.sh stop             stop it (TERM, then KILL after a grace period)
#   scripts/kafka.sh status           exit 0 when it runs and its port answers
#   scripts/kafka.sh bootstrap        print its bootstrap servers (host:port)
#
# Environment: KAFKA_VERSION (4.4.0), KAFKA_CACHE (.cache/kafka), KAFKA_PORT (19092),
# KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_DATA (KAFKA_CACHE/run-PORT),
# KAFKA_HEAP (512m), KAFKA_START_TIMEOUT (90 seconds).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION="${KAFKA_LOG4J_VERSION:-2.25.5}"
CACHE="${KAFKA_CACHE:-$ROOT/.cache/kafka}"
DIST="$CACHE/kafka-$VERSION"
PORT="${KAFKA_PORT:-19092}"
CPORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
DATA="${KAFKA_DATA:-$CACHE/run-$PORT}"
HEAP="${KAFKA_HEAP:-512m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
PIDFILE="$DATA/kafka.pid"
LOG="$DATA/kafka.out"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
    # The marker is written last, so an interrupted download is redone, never half-used.
    [[ -f "$DIST/.complete" ]] && return 0
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    command -v java >/dev/null || die "java not found (apt-get install openjdk-17-jre-headless)"
    mkdir -p "$DIST"
    cat >"$DIST/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sidecar</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <!-- Kafka logs through slf4j 1.x; this routes it to the log4j2 core it already depends on. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
    echo "kafka.sh: fetching Apache Kafka $VERSION from Maven Central into $DIST" >&2
    rm -rf "$DIST/libs"
    mvn -B -q -f "$DIST/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$DIST/libs" >"$DIST/fetch.log" 2>&1 \
        || { tail -n 30 "$DIST/fetch.log" >&2; die "maven could not fetch kafka_2.13:$VERSION"; }
    ls "$DIST"/libs/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka jar after fetch"
    touch "$DIST/.complete"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

write_config() {
    mkdir -p "$DATA/logs"
    cat >"$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA/logs
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
PROPS
    cat >"$DATA/log4j2.properties" <<L4J
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $DATA/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
L4J
}

java_cmd() {
    local main="$1"; shift
    JAVA_CMD=(java -Xms128m -Xmx"$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$DATA/log4j2.properties"
        -cp "$DIST/libs/*" "$main" "$@")
}

start() {
    fetch
    if running; then
        port_open "$PORT" && { echo "kafka.sh: already running on 127.0.0.1:$PORT" >&2; return 0; }
    fi
    port_open "$PORT" && die "127.0.0.1:$PORT is taken by another process (set KAFKA_PORT)"
    write_config
    if [[ ! -f "$DATA/logs/meta.properties" ]]; then
        # A fixed cluster id keeps re-formats of a wiped directory reproducible.
        java_cmd kafka.tools.StorageTool format --ignore-formatted \
            -t "${KAFKA_CLUSTER_ID:-c2lkZWNhci1sb2NhbC0x}" -c "$DATA/server.properties"
        "${JAVA_CMD[@]}" >"$DATA/format.log" 2>&1 || { cat "$DATA/format.log" >&2; die "format failed"; }
    fi
    : >"$DATA/server.log"
    java_cmd kafka.Kafka "$DATA/server.properties"
    nohup "${JAVA_CMD[@]}" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + START_TIMEOUT))
    # Ready = the server logged that it started and its listener accepts connections.
    until grep -q "Kafka Server started" "$DATA/server.log" 2>/dev/null && port_open "$PORT"; do
        if ! running; then tail -n 40 "$LOG" "$DATA/server.log" >&2; die "broker exited during start"; fi
        ((SECONDS < deadline)) || { tail -n 40 "$DATA/server.log" >&2; stop; die "not ready after ${START_TIMEOUT}s"; }
        sleep 0.2
    done
    echo "kafka.sh: Kafka $VERSION serving on 127.0.0.1:$PORT (data $DATA)" >&2
}

stop() {
    running || { rm -f "$PIDFILE"; return 0; }
    local pid; pid="$(cat "$PIDFILE")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
        sleep 0.1
    done
    rm -f "$PIDFILE"
}

case "${1:-}" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    status) running && port_open "$PORT" ;;
    bootstrap) echo "127.0.0.1:$PORT" ;;
    *) echo "usage: $0 fetch|start|stop|status|bootstrap" >&2; exit 2 ;;
esac
