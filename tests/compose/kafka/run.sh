#!/bin/sh
# As the official image's entrypoint: every KAFKA_* variable becomes a broker setting
# (KAFKA_LOG_DIRS -> log.dirs; "___" -> "-", "__" -> "_", "_" -> "."), the storage is
# formatted once with CLUSTER_ID, then the broker runs in the foreground.
set -euf  # -f: the class path below holds a literal *
config=/opt/kafka/config/server.properties
: > "$config"
env | grep '^KAFKA_' | while IFS='=' read -r name value; do
    case "$name" in KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS) continue ;; esac
    key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
    printf '%s=%s\n' "$key" "$value" >> "$config"
done
java_cmd="java ${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m} -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp /opt/kafka/libs/*"
$java_cmd kafka.tools.StorageTool format --ignore-formatted --cluster-id "${CLUSTER_ID:?CLUSTER_ID is not set}" --config "$config"
exec $java_cmd kafka.Kafka "$config"
