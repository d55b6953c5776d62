"""The reference worker acking on arrival, before the side effect."""
from services.payment_worker.worker import DONE, PaymentWorker, main


class AckFirst(PaymentWorker):
    def on_message(self, conn, channel, method, properties, body):
        channel.basic_ack(method.delivery_tag)  # BUG: acked before the payment is charged
        super().on_message(conn, channel, method, properties, body)

    def settle(self, channel, method, properties, body, outcome):
        with self._lock:
            self.in_flight -= 1
        # already acked: a failure can neither be retried nor dead-lettered any more


main(AckFirst)
