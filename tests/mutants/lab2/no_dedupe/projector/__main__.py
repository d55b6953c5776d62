"""The reference projector without its inbox and version check: every delivery is applied."""
from services.common.consumer_loop import run_loop
from services.common.orders.events import BadEvent
from services.common.orders.projection import apply_event
from services.common.outbox.events import parse_record
from services.projector.projector import Projector


class NoDedupe(Projector):
    def apply_record(self, msg):
        try:
            event = parse_record(msg.key(), msg.value(), msg.headers())
        except BadEvent as e:
            self.dead_letter(msg, str(e))
            return
        # BUG: no inbox claim of the outbox id and no version check: a record the relay re-sent
        # after a crash, or a duplicate delivery, is applied again (the order counted twice).
        apply_event(self.conn, event)


run_loop(NoDedupe)
