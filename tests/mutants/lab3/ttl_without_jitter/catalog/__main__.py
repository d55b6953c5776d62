"""The reference catalog, except that every entry gets exactly the same TTL."""
from services.catalog.app import TTL_MS, Catalog, main


class NoJitter(Catalog):
    def ttl_ms(self):
        # BUG: keys filled together (a cold start, a restarted Redis) expire together - and
        # stampede together.
        return TTL_MS


main(NoJitter)
