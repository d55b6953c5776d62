from services.common.orders.consumer import run_consumer
from services.common.orders.events import BadEvent, parse_event
from services.read_model.consumer import ReadModel


class TwoTransactions(ReadModel):
    def apply_record(self, msg):
        try:
            event = parse_event(msg.value())
        except BadEvent as e:
            self.dead_letter(msg, str(e))
            return
        with self.conn.transaction():
            fresh = self.claim(event, msg)
        if fresh:  # BUG: a second transaction; a crash before it commits loses the effects for good
            with self.conn.transaction():
                self.apply(self.conn, event)


run_consumer(TwoTransactions)
