"""The reference worker with a charges ledger that accepts the same payment twice."""
from services.payment_worker import worker
from services.payment_worker.worker import PaymentWorker, main

worker.SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id           bigserial PRIMARY KEY,
    payment_id   text NOT NULL,             -- BUG: not unique
    account      text NOT NULL,
    amount_cents bigint NOT NULL,
    charge_id    text NOT NULL,
    attempts     int NOT NULL,
    charged_at   timestamptz NOT NULL DEFAULT now()
);
"""


class NotIdempotent(PaymentWorker):
    def charged(self, payment_id):
        return False  # BUG: never asks whether this payment was charged already

    def record(self, payment, charge_id, attempt):
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("""INSERT INTO charges (payment_id, account, amount_cents, charge_id, attempts)
                            VALUES (%s, %s, %s, %s, %s)""",
                         (payment["payment_id"], str(payment.get("account", "")), int(payment["amount_cents"]),
                          charge_id, attempt))


main(NotIdempotent)
