"""The reference API with a fire-and-forget publisher."""
import threading

import pika

from services.common import amqp
from services.payments_api.app import main
from services.payments_api.publisher import PublishError


class FireAndForget:
    def __init__(self, exchange, routing_key):
        self.exchange, self.routing_key = exchange, routing_key
        self._lock = threading.Lock()
        self._conn = self._channel = None

    def publish(self, body, headers, message_id, timeout=8.0):
        with self._lock:
            try:
                if self._channel is None or not self._channel.is_open:
                    self._conn = pika.BlockingConnection(amqp.parameters())
                    self._channel = self._conn.channel()
                # BUG: no confirm_delivery, no mandatory: basic_publish returns once the bytes are written
                self._channel.basic_publish(self.exchange, self.routing_key, body,
                                            pika.BasicProperties(delivery_mode=2, message_id=message_id,
                                                                 headers=headers))
                self._conn.process_data_events(0)
            except pika.exceptions.AMQPError as e:
                self._channel = None
                raise PublishError(str(e)) from None

    def close(self):
        if self._conn is not None and self._conn.is_open:
            self._conn.close()


main(FireAndForget)
