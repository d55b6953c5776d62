from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class CommitFirst(ReadModel):
    def handle(self, msg):
        self.commit_offset(msg)  # BUG: marked done before the effects exist
        self.apply_record(msg)


run_consumer(CommitFirst)
