"""Put on the path of every sandboxed submission by grader/sandbox (copied into its site folder).

The sandbox's egress filter lets a submission connect only to the ports its contract names. pika
wakes its I/O loop through a socket pair it builds from a TCP listener on 127.0.0.1 (a workaround
for Windows), a connection the filter refuses: every pika connection would fail under `labkit
grade` while it works under `labkit check`. When pika.compat is first imported, its socket pair is
replaced by a Unix one (the same job, no port). Nothing is imported eagerly: services that never
use pika pay nothing.
"""
import importlib.abc
import importlib.util
import socket
import sys


def _unix_socketpair(*_args, **_kwargs):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


class _PatchPikaSocketpair(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "pika.compat" or not hasattr(socket, "AF_UNIX"):
            return None
        sys.meta_path.remove(self)  # once; and find the real spec without finding ourselves
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            module.nonblocking_socketpair = _unix_socketpair

        spec.loader.exec_module = exec_then_patch
        return spec


sys.meta_path.insert(0, _PatchPikaSocketpair())
