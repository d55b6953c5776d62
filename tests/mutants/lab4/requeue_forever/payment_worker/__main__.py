"""The reference worker requeueing every failure at once."""
from services.payment_worker.worker import DONE, PaymentWorker, main


class RequeueForever(PaymentWorker):
    def settle(self, channel, method, properties, body, outcome):
        with self._lock:
            self.in_flight -= 1
        if not channel.is_open:
            return
        if outcome == DONE:
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)  # BUG: back to the queue, at once, forever


main(RequeueForever)
