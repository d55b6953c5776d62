"""The reference order service, except that the key's response is stored in a transaction of its
own, after the order and its outbox row committed."""
from fastapi.responses import JSONResponse

from services.common.http import serve
from services.common.idempotency import Replay, replayed
from services.order_service.app import OrderService, create_app


class ResponseStoredLater(OrderService):
    def idempotent(self, key, fp, work):
        with self.pool.connection() as conn:
            outcome = self.store.begin(conn, key, fp)
        if isinstance(outcome, Replay):
            return replayed(outcome)
        try:
            with self.pool.connection() as conn, conn.transaction():
                status, body = work(conn, outcome)
        except BaseException:
            with self.pool.connection() as conn:
                self.store.release(conn, key)
            raise
        response = JSONResponse(body, status)
        # BUG: a second transaction. A crash between the two commits leaves the order (and its
        # event) without the key's answer: the retry redoes the work and fails on the order it made.
        with self.pool.connection() as conn, conn.transaction():
            self.store.finish(conn, key, status, bytes(response.body))
        return response


serve(create_app(ResponseStoredLater))
