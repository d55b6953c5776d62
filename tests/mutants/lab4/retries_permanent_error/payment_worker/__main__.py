"""The reference worker, except that a refused payment (422) is retried like an outage."""
from services.payment_worker.worker import Gateway, PaymentWorker, Permanent, Transient, main


class RetryingGateway(Gateway):
    def charge(self, payment):
        try:
            return super().charge(payment)
        except Permanent as e:
            raise Transient(str(e)) from None  # BUG: a 422 will never succeed, however often it is tried


class RetriesPermanent(PaymentWorker):
    def __init__(self):
        super().__init__()
        self.gateway = RetryingGateway()


main(RetriesPermanent)
