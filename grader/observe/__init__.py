"""The grader's own reads of the system under test: table rows, topic records, consumer lag.

Each observation is recorded in the history (`observe` events) so checkers judge what the grader
saw, never what a service said about itself; `quiesce` waits until the system has settled.
"""
from .kafka import group_lag_is_zero, observe_topic
from .postgres import observe_rows, observe_slots, rows_stable, slot_sampler
from .quiesce import quiesce

__all__ = ["group_lag_is_zero", "observe_rows", "observe_slots", "observe_topic", "quiesce", "rows_stable",
           "slot_sampler"]
