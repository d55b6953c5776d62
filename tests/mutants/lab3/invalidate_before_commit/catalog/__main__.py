"""The catalog invalidates in the request, BEFORE its database commit (and there is no invalidator)."""
from services.catalog.app import Catalog, main
from services.common.cache import product_key


class InvalidateBeforeCommit(Catalog):
    def put(self, product_id, raw):
        # BUG: the key is deleted before the update commits. A read in between (or a miss that
        # read the row before it) fills the OLD version again, and nothing removes it until its TTL.
        try:
            self.cached("DEL", self.redis.delete, product_key(product_id))
        except Exception:
            pass
        return super().put(product_id, raw)


main(InvalidateBeforeCommit)
