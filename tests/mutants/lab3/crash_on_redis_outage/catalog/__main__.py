"""The reference catalog, except that a Redis error becomes a 500 (no degraded mode)."""
from services.catalog.app import Catalog, main
from services.common.cache import client_span


class CrashOnOutage(Catalog):
    def cached(self, operation, call, *args, **kwargs):
        # BUG: no fallback - a Redis that is down (or cut off) fails every read with a 500.
        with client_span(self.tracer, "redis", operation, **self.redis_attrs):
            return call(*args, **kwargs)


main(CrashOnOutage)
