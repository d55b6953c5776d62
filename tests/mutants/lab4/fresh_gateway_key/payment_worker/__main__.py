"""The reference worker, except that each gateway call carries a new idempotency key."""
import uuid

import httpx

from services.payment_worker.worker import Gateway, PaymentWorker, Permanent, Transient, main


class FreshKeyGateway(Gateway):
    def charge(self, payment):
        try:
            resp = self.client.post(f"{self.url}/charges", json={"payment_id": payment["payment_id"],
                                                                 "amount_cents": payment["amount_cents"]},
                                    headers={"Idempotency-Key": uuid.uuid4().hex})  # BUG: not the payment id
        except httpx.HTTPError as e:
            raise Transient(f"gateway unreachable: {type(e).__name__}") from None
        if resp.status_code == 200:
            return str(resp.json()["charge_id"])
        if resp.status_code in (400, 402, 409, 422):
            raise Permanent(f"gateway refused: {resp.status_code} {resp.text[:100]}")
        raise Transient(f"gateway answered {resp.status_code}")


class FreshKey(PaymentWorker):
    def __init__(self):
        super().__init__()
        self.gateway = FreshKeyGateway()


main(FreshKey)
