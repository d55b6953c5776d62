#!/bin/sh
# PLAINTEXT://host:port,... -> tcp://host:port (Tansu takes one listener)
first() { echo "$1" | tr ',' '\n' | grep '^PLAINTEXT://' | head -n 1 | sed 's|^PLAINTEXT://|tcp://|'; }
exec /usr/local/bin/tansu broker --listener-url "$(first "$KAFKA_LISTENERS")" \
    --advertised-listener-url "$(first "$KAFKA_ADVERTISED_LISTENERS")" --storage-engine memory://tansu/ "$@"
