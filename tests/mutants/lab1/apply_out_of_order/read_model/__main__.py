from services.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class NewestFirst(ReadModel):
    def poll(self):
        return list(reversed(self.consumer.consume(100, 0.5)))  # BUG: breaks per-key order


run_consumer(NewestFirst)
