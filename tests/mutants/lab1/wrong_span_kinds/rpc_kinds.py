"""A tracer that starts messaging spans with RPC kinds: the one bug of this mutant."""
from opentelemetry.trace import SpanKind

RPC_KIND = {SpanKind.PRODUCER: SpanKind.CLIENT, SpanKind.CONSUMER: SpanKind.SERVER}


class RpcKinds:
    def __init__(self, tracer) -> None:
        self.tracer = tracer

    def start_as_current_span(self, name, *args, kind=SpanKind.INTERNAL, **kwargs):
        return self.tracer.start_as_current_span(name, *args, kind=RPC_KIND.get(kind, kind), **kwargs)  # BUG

    def __getattr__(self, name):
        return getattr(self.tracer, name)
