#!/bin/sh
# Enough of the official kafka-topics.sh for the compose healthcheck:
# `kafka-topics.sh --bootstrap-server HOST:PORT --list` (ListTopics.java).
exec java -Xmx64m -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    -cp "/opt/kafka/classes:/opt/kafka/libs/*" ListTopics "$@"
