"""The reference invalidator, except that it ignores INSERTs ("a new product is in no cache yet")."""
from services.invalidator import invalidator
from services.invalidator.invalidator import Invalidator

apply = Invalidator.apply


def apply_but_inserts(self, op, product_id, version):
    if op == "INSERT":
        return  # BUG: a cached 404 of this product stays until its TTL
    apply(self, op, product_id, version)


Invalidator.apply = apply_but_inserts
invalidator.main()
