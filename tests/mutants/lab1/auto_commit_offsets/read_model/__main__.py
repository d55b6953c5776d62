from services.common import kafka
from services.common.config import namespaced
from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class AutoCommit(ReadModel):
    def __init__(self):
        super().__init__()
        self.consumer.close()
        # BUG: librdkafka commits whatever poll() returned every 5 s, whether or not it was applied
        self.consumer = kafka.consumer(namespaced("read-model"), **{"enable.auto.commit": True})

    def commit_offset(self, msg):
        pass  # "the client commits for us"


run_consumer(AutoCommit)
