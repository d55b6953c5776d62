from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class CrashOnPoison(ReadModel):
    def dead_letter(self, msg, reason):
        raise ValueError(f"cannot handle record: {reason}")  # BUG: one bad record stops everything


run_consumer(CrashOnPoison)
