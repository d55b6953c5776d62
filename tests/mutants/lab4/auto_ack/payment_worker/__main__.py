"""The reference worker consuming with automatic acks (no_ack)."""
import functools

from services.common import amqp
from services.payment_worker.worker import DONE, PaymentWorker, main


class AutoAck(PaymentWorker):
    def subscribe(self, conn, channel):
        # BUG: auto_ack=True - the broker forgets each message as soon as it is sent to us.
        channel.basic_consume(amqp.work_queue(), functools.partial(self.on_message, conn), auto_ack=True)

    def settle(self, channel, method, properties, body, outcome):
        with self._lock:
            self.in_flight -= 1
        if outcome != DONE and channel.is_open:  # a retry is still re-published; nothing to ack or reject
            super_settle_retry(channel, properties, body)


def super_settle_retry(channel, properties, body):
    import pika
    headers = dict(properties.headers or {})
    attempt = int(headers.get(amqp.ATTEMPT_HEADER, 1) or 1)
    if attempt >= amqp.MAX_ATTEMPTS:
        return  # dropped: there is no delivery left to reject
    headers[amqp.ATTEMPT_HEADER] = attempt + 1
    channel.basic_publish("", amqp.retry_queue(attempt), body,
                          pika.BasicProperties(delivery_mode=2, message_id=properties.message_id, headers=headers))


main(AutoAck)
