"""The reference catalog, except that the lock is released with a plain DEL (no token check)."""
from services.catalog.app import Catalog, main
from services.common.cache import key


class ReleaseWithoutToken(Catalog):
    def release(self, product_id, token):
        # BUG: deletes whatever lock is there. A holder that overran its lock's TTL deletes the
        # lock its successor took meanwhile, and a third request reads the database too.
        self.cached("DEL", self.redis.delete, key("lock", "product", product_id))


main(ReleaseWithoutToken)
