"""The reference catalog, except that its Redis client has no timeouts (the library's defaults)."""
import redis

from services.catalog import app
from services.common.config import env


def default_client(timeout=None):
    return redis.Redis.from_url(env("REDIS_URL"))  # BUG: a Redis that stops answering blocks the read for ever


app.redis_client = default_client
app.main()
