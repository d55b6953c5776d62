"""The reference worker, except that the prefetch bound is set after the consumer is created."""
import time

import pika

from services.common import amqp
from services.common.lifecycle import stopping
from services.payment_worker.worker import PaymentWorker, log, main


class QosAfterConsume(PaymentWorker):
    def consume(self):
        conn = pika.BlockingConnection(amqp.parameters())
        try:
            channel = conn.channel()
            amqp.declare_topology(channel)
            channel.confirm_delivery()
            self.subscribe(conn, channel)
            # BUG: basic_qos applies to consumers created after it; the one above stays unbounded
            channel.basic_qos(prefetch_count=self.prefetch)
            log.info("consuming %s (prefetch %d)", amqp.work_queue(), self.prefetch)
            while not stopping.is_set():
                conn.process_data_events(time_limit=0.5)
            channel.stop_consuming()
            deadline = time.monotonic() + 10
            while self.in_flight and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        finally:
            if conn.is_open:
                try:
                    conn.close()
                except pika.exceptions.AMQPError:
                    pass


main(QosAfterConsume)
