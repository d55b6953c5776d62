"""Readiness probes: a real request per kind, shared by every runtime."""
from __future__ import annotations


def kafka(url: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": url, "log_level": 0})  # refusals while starting are expected
    return admin.list_topics(timeout=2).brokers is not None


def postgres(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, connect_timeout=2) as conn:
        return conn.execute("SHOW wal_level").fetchone()[0] == "logical"


def redis(url: str) -> bool:
    import redis as redis_client

    return redis_client.Redis.from_url(url, socket_timeout=2).ping()


def rabbitmq(url: str) -> bool:
    import pika

    pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=2")).close()
    return True


PROBES = {"kafka": kafka, "postgres": postgres, "redis": redis, "rabbitmq": rabbitmq}


def probe(kind: str, url: str) -> bool:
    return PROBES[kind](url)
