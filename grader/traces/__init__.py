"""Trace assertions and checkers over the spans the grader's OTLP receiver collected.

select.py  - `Sel` / `Step` selectors (service, name glob, kind, status, attributes)
model.py   - `SpanIndex`: spans by trace, parent and link; an operation's related spans
assertions - `OperationSpans` (count, joined, attrs, status, duration) and `wait_for_traces`
checks.py  - checkers returning CheckResult: connected traces, headers, semantic conventions,
             redelivery, error status, secrets, spans after shutdown; `combine`
context.py - the grader's own W3C traceparent (seeded) and parsing
"""
from .model import SpanIndex
from .select import ANY, Sel, Step
from .assertions import Completeness, Expectation, OperationSpans, wait_for_traces
from .context import TraceParent, new_traceparent, parse_traceparent
from .checks import (ExpectedError, Operation, RecordHeader, Redelivery, check_connected_traces,
                     check_error_status, check_no_secret_leaks, check_redelivery, check_semantic_conventions,
                     check_spans_after_shutdown, check_trace_headers, combine, semconv_problems)

__all__ = ["ANY", "Completeness", "Expectation", "ExpectedError", "Operation", "OperationSpans", "RecordHeader",
           "Redelivery", "Sel", "SpanIndex", "Step", "TraceParent", "check_connected_traces", "check_error_status",
           "check_no_secret_leaks", "check_redelivery", "check_semantic_conventions", "check_spans_after_shutdown",
           "check_trace_headers", "combine", "new_traceparent", "parse_traceparent", "semconv_problems",
           "wait_for_traces"]
