import uuid

from services.common.idempotency import Claim
from services.common.orders.api import serve_api
from services.order_api.app import OrderApi


class NewIds(OrderApi):
    def idempotent(self, key, fp, work):
        # BUG: the ids stored with the key are ignored; each attempt invents its own
        return super().idempotent(key, fp, lambda claim: work(Claim(str(uuid.uuid4()), str(uuid.uuid4()))))


serve_api(NewIds)
