from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class NewestFirst(ReadModel):
    """Trusts arrival order while breaking it: applies each fetched batch newest-first, and lets
    whichever event is applied last decide an order's status."""

    def poll(self):
        return self.consumer.consume(100, 0.5)  # a batch at a time...

    def process_batch(self, msgs):
        for msg in reversed(msgs):  # BUG: ...applied newest first, which breaks per-key order
            self.process(msg)  # (spans and database retries as the reference has them)

    def apply(self, conn, event):
        if event["type"] == "OrderPlaced":  # BUG: a late OrderPlaced overwrites the cancel's tombstone
            conn.execute("DELETE FROM orders WHERE order_id = %s AND status = 'cancelled'", (event["order_id"],))
        super().apply(conn, event)


run_consumer(NewestFirst)
