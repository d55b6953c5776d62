"""A payment gateway the grader runs for the services to call (PAYMENT_GATEWAY_URL): every call is
recorded in the history with the grader's own clock, so how often and when a payment was attempted
is the grader's evidence, never the service's word.

POST /charges {"payment_id", "amount_cents"} (header Idempotency-Key) answers
  200 {"charge_id"}                 approved (the same charge again for a repeated key: idempotent)
  503                               for a payment planned to fail `fail_first` times, those first times
  422 {"error": "card_declined"}    for a poison payment, every time
and, for a payment planned `slow`, holds its first answer that many seconds (a long job).
Unplanned payments are approved at once. Each call: observe what="gateway-call" with payment_id,
n (its call number for that payment), status, t (start) and t_end, the key, and for an approval
the charge id and whether it replayed an earlier one (the same key as before): two charge ids
for one payment are two charges of the customer's card, whatever the worker's table says.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..history import History

CALL = "gateway-call"


@dataclass
class Plan:
    fail_first: int = 0  # answer 503 this many times
    poison: bool = False  # answer 422 every time
    slow: float = 0.0  # hold the first answer this long


class Gateway:
    def __init__(self, history: History) -> None:
        self.history = history
        self.plans: dict[str, Plan] = {}
        self.calls: dict[str, int] = {}
        self.approved: dict[str, str] = {}  # payment id -> charge id
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def plan(self, payment_id: str, plan: Plan) -> None:
        with self._lock:
            self.plans[payment_id] = plan

    @property
    def url(self) -> str:
        assert self._server is not None, "gateway not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "Gateway":
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the history is the log
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(length, 1 << 16))
                status, body = gateway.answer(raw, self.headers.get("Idempotency-Key"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # a worker killed mid-call (a crash fault) is no error of the gateway's

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="gateway", daemon=True).start()
        return self

    def answer(self, raw: bytes, key: str | None) -> tuple[int, dict]:
        t = self.history.elapsed()
        try:
            req = json.loads(raw)
            payment_id = str(req["payment_id"])
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "bad_request"}
        with self._lock:
            n = self.calls[payment_id] = self.calls.get(payment_id, 0) + 1
            plan = self.plans.get(payment_id, Plan())
        if plan.slow and n == 1:
            time.sleep(plan.slow)
        charge, replay = None, False
        if plan.poison:
            status, body = 422, {"error": "card_declined"}
        elif n <= plan.fail_first:
            status, body = 503, {"error": "try_later"}
        else:
            with self._lock:
                charge = self.approved.get(payment_id) if key == payment_id else None
                replay = charge is not None
                if charge is None:
                    charge = f"ch_{payment_id}_{n}"
                    self.approved.setdefault(payment_id, charge)
            status, body = 200, {"charge_id": charge, "replayed": replay}
        self.history.observe(CALL, payment_id=payment_id, n=n, status=status, t_start=round(t, 4),
                             t_end=round(self.history.elapsed(), 4), key=key, charge_id=charge, replayed=replay)
        return status, body

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
