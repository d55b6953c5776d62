"""The grader's OTLP receiver and the span model checks read (live, or from a saved history)."""
from .receiver import MAX_BODY, BodyError, OtlpReceiver, ReceiverLimits, capped_limits, parse_body
from .spans import KINDS, SPAN_EVENT, Span, decode_request, spans_from_history

__all__ = ["KINDS", "MAX_BODY", "SPAN_EVENT", "BodyError", "OtlpReceiver", "ReceiverLimits", "capped_limits", "Span", "decode_request", "parse_body",
           "spans_from_history"]
