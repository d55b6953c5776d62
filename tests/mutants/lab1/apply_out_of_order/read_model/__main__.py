from services.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class NewestFirst(ReadModel):
    """Processes fetched batches, then commits the batch: fine - except for the order."""

    def poll(self):
        batch = [m for m in self.consumer.consume(100, 0.5) if not m.error()]
        for msg in reversed(batch):  # BUG: newest first breaks per-key order
            self.apply_record(msg)
        if batch:
            self.consumer.commit(asynchronous=False)
        return []


run_consumer(NewestFirst)
