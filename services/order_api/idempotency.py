"""Lab 1's idempotency keys now live in services.common.idempotency (lab 2 uses them too)."""
from services.common.idempotency import SCHEMA, Claim, IdempotencyStore, Replay, fingerprint  # noqa: F401
