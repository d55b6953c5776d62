from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class NoInbox(ReadModel):
    def claim(self, event, msg):
        return True  # BUG: never checks whether the event was processed before


run_consumer(NoInbox)
