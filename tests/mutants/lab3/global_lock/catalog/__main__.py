"""The reference catalog, except that one lock key guards the fills of every product."""
import uuid

from services.catalog.app import Catalog, main
from services.common.cache import key


class GlobalLock(Catalog):
    def acquire(self, product_id):
        token = uuid.uuid4().hex
        # BUG: the same key for every product - one slow fill makes every other miss wait
        got = self.cached("SET", self.redis.set, key("lock", "fill"), token, nx=True, px=2000)
        return token if got else None

    def release(self, product_id, token):
        self.cached("EVALSHA", self.release_script, keys=[key("lock", "fill")], args=[token])


main(GlobalLock)
