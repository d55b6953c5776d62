"""The reference order service, except that the outbox row is written in a transaction of its own,
after the order's (which also stored the key's response)."""
import threading

from services.common.http import serve
from services.common.outbox import events
from services.order_service.app import OrderService, create_app

insert_outbox_row = events.append
held = threading.local()  # the outbox rows of this thread's request, written after its commit


def hold_back(conn, *row):
    held.rows.append(row)  # instead of inserting it in the order's transaction


class OrderThenOutbox(OrderService):
    def idempotent(self, key, fp, work):
        held.rows = []
        response = super().idempotent(key, fp, work)  # the order and the key's response commit here
        # BUG: a second transaction. A crash between the two commits leaves an order (and its
        # stored 201, replayed to every retry) whose event is never written, so never published.
        if held.rows:
            with self.pool.connection() as conn, conn.transaction():
                for row in held.rows:
                    insert_outbox_row(conn, *row)
        return response


events.append = hold_back
serve(create_app(OrderThenOutbox))
