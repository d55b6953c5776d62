import uuid

from fastapi.responses import JSONResponse

from services.order_api.app import OrderApi
from services.order_api.idempotency import Claim
from services.common.orders.api import serve_api


class KeyIgnored(OrderApi):
    def idempotent(self, key, fp, work):
        status, body = work(Claim(str(uuid.uuid4()), str(uuid.uuid4())))  # BUG: no claim, no replay
        return JSONResponse(body, status)


serve_api(KeyIgnored)
