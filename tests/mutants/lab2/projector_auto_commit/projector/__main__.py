"""The reference projector, except that its offsets are committed by librdkafka's auto-commit as
soon as the records are polled (enable.auto.offset.store left at its default)."""
from services.common.config import env_int, namespaced
from services.common.consumer_loop import ConsumerLoop, run_loop
from services.common.outbox.events import ORDER, topic_for
from services.projector.projector import Projector


class AutoCommit(Projector):
    def __init__(self) -> None:
        self.batch_size = env_int("PROJECTOR_BATCH", 100)
        topic = topic_for(ORDER)
        # BUG: offsets stored at poll and committed every 5 s in the background, whether or not the
        # records' transaction committed: a crash after an auto-commit skips them for good.
        ConsumerLoop.__init__(self, [topic], namespaced("projector"), f"{topic}.dlq", **{"enable.auto.commit": True})

    def commit_offset(self, msg) -> None:
        pass  # the background commit does it


run_loop(AutoCommit)
