"""The reference worker, except that its connection turns heartbeats off."""
from services.common import amqp
from services.payment_worker.worker import PaymentWorker, main

parameters = amqp.parameters


def without_heartbeats():
    params = parameters()
    params.heartbeat = 0  # BUG: "our jobs are long, the broker kept closing the connection"
    return params


amqp.parameters = without_heartbeats

main(PaymentWorker)
