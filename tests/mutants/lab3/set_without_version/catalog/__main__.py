"""The reference catalog, except that a fill is a plain SET (no version check)."""
import json

from services.catalog.app import NEGATIVE_TTL_MS, Catalog, main
from services.common.cache import product_key


class SetWithoutVersion(Catalog):
    def fill(self, product_id, row):
        # BUG: overwrites whatever the cache holds - also the invalidator's marker of a NEWER
        # version, when this miss read its row before the update: the stale-set race.
        entry = {"version": 0, "missing": True} if row is None else row
        ttl = NEGATIVE_TTL_MS if row is None else self.ttl_ms()
        self.cached("SET", self.redis.set, product_key(product_id), json.dumps(entry), px=ttl)


main(SetWithoutVersion)
