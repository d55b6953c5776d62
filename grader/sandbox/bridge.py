"""The sockets that join one service life's network namespace to the ports its env names.

The grader (root) creates them in a root-owned folder of the run, before the life starts, and hands
them to the two relays (relay.py) as inherited file descriptors: Unix listeners `out-P` for each
loopback port P the env names (fault proxies, the OTLP receiver, the grader's own stand-ins), and for
each port Q of the service's own (its `*PORT` variables) a TCP listener on the host's 127.0.0.1:Q plus
a Unix listener `in-Q`. The submission can use these sockets but not replace them (it cannot write the
folder), so a relay never follows a path it chose.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from .firewall import ADDRESS

RELAY = Path(__file__).with_name("relay.py")


def split_ports(env: dict[str, str]) -> tuple[set[int], set[int]]:
    """(outbound, inbound): loopback ports in URLs and bootstrap lists; the service's own *PORT values."""
    inbound = {int(v) for k, v in env.items() if k.endswith("PORT") and v.isdigit() and 0 < int(v) < 65536}
    outbound = {int(p) for k, v in env.items() if not k.endswith("PORT") for p in ADDRESS.findall(v)}
    return {p for p in outbound if 0 < p < 65536} - inbound, inbound


def _unix_listener(path: Path, uid: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chown(path, uid, uid)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


class Bridge:
    def __init__(self, folder: Path, uid: int, outbound: set[int], inbound: set[int], inside_relay: Path) -> None:
        folder.mkdir(mode=0o755)
        self.uid, self.inside_relay = uid, inside_relay
        self._socks: list[socket.socket] = []
        self.outside: list[str] = []
        self.inside: list[str] = []
        try:
            for port in sorted(outbound):
                path = folder / f"out-{port}"
                self.outside.append(f"fd:{self._keep(_unix_listener(path, uid))}=tcp:{port}")
                self.inside.append(f"tcp:{port}=unix:{path}")
            for port in sorted(inbound):
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._keep(tcp)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind(("127.0.0.1", port))  # taken: the caller sees the OSError, as the service would
                tcp.listen(128)
                path = folder / f"in-{port}"
                self.outside.append(f"fd:{tcp.fileno()}=unix:{path}")
                self.inside.append(f"fd:{self._keep(_unix_listener(path, uid))}=tcp:{port}")
        except BaseException:
            self.close()
            raise

    def _keep(self, sock: socket.socket) -> int:
        sock.set_inheritable(True)
        self._socks.append(sock)
        return sock.fileno()

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(s.fileno() for s in self._socks)

    def outside_command(self, argv: list[str]) -> list[str]:
        """Started as root (argv is bwrap); relays as the run's uid, in the host's network namespace."""
        return [sys.executable, "-I", str(RELAY), "--uid", str(self.uid), *self.outside, "--", *argv]

    def inside_command(self, argv: list[str]) -> list[str]:
        return [sys.executable, "-I", str(self.inside_relay), *self.inside, "--", *argv]

    def close(self) -> None:
        """The grader's copies, once the relays have theirs."""
        for sock in self._socks:
            sock.close()
        self._socks = []
