"""The reference worker doing its work on the I/O thread."""
from services.payment_worker.worker import PaymentWorker, main


class Blocking(PaymentWorker):
    def on_message(self, conn, channel, method, properties, body):
        with self._lock:
            self.in_flight += 1
        # BUG: the job runs right here; process_data_events (heartbeats included) waits for it
        outcome = self.process(method, properties, body)
        self.settle(channel, method, properties, body, outcome)


main(Blocking)
