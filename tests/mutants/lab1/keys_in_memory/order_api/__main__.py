import threading
import uuid

from fastapi.responses import JSONResponse, Response

from services.common.http import ApiError
from services.common.idempotency import Claim
from services.common.orders.api import serve_api
from services.order_api.app import OrderApi

KEYS: dict[str, tuple] = {}  # BUG: gone when the process is
LOCK = threading.Lock()


class KeysInMemory(OrderApi):
    def idempotent(self, key, fp, work):
        with LOCK:
            entry = KEYS.get(key)
            if entry is not None:
                stored_fp, state, claim, status, body = entry
                if stored_fp != fp:
                    raise ApiError(422, "idempotency_key_reused", "this key was used for a different request")
                if state == "in_progress":
                    raise ApiError(409, "request_in_progress", "a request with this key is still running")
                if state == "done":
                    return Response(body, status, media_type="application/json")
            else:
                claim = Claim(str(uuid.uuid4()), str(uuid.uuid4()))
            KEYS[key] = (fp, "in_progress", claim, None, None)
        try:
            status, body = work(claim)
        except BaseException:
            with LOCK:
                KEYS[key] = (fp, "released", claim, None, None)
            raise
        response = JSONResponse(body, status)
        with LOCK:
            KEYS[key] = (fp, "done", claim, status, bytes(response.body))
        return response


serve_api(KeysInMemory)
