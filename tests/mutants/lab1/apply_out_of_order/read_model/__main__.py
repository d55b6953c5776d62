from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class NewestFirst(ReadModel):
    """Trusts arrival order while breaking it: applies each fetched batch newest-first, and lets
    whichever event is applied last decide an order's status."""

    def poll(self):
        batch = [m for m in self.consumer.consume(100, 0.5) if not m.error()]
        for msg in reversed(batch):  # BUG: newest first breaks per-key order
            self.apply_record(msg)
        if batch:
            self.consumer.commit(asynchronous=False)
        return []

    def apply(self, conn, event):
        if event["type"] == "OrderPlaced":  # BUG: a late OrderPlaced overwrites the cancel's tombstone
            conn.execute("DELETE FROM orders WHERE order_id = %s AND status = 'cancelled'", (event["order_id"],))
        super().apply(conn, event)


run_consumer(NewestFirst)
