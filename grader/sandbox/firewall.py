"""Egress filter per run: the run's uid may open TCP connections to the loopback ports it was given
(the service contract's URLs - the fault proxy, not the broker behind it - and its own service
ports) and nothing else: not the real broker port, not other runs' services, not servers of the
machine on standard ports, not the outside world.

Since each service life has a network namespace of its own (bridge.py, relay.py), this is the second
wall: the only sockets of the run's uid in the host's namespace are its outside relay's, whose targets
are fixed; the filter (nftables matching the socket owner's uid, `meta skuid`, unique to the run)
would still hold if one were subverted. Packets of connections already established pass. Where `nft`
is missing or refused, `Egress.create` returns None and the namespace alone holds.
"""
from __future__ import annotations

import re
import shutil
import subprocess

TABLE = ("inet", "labkit_sandbox")
# host:port in URLs and bootstrap lists, for the loopback addresses the kit uses.
ADDRESS = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})")


def nft(*args: str, script: str | None = None) -> str:
    out = subprocess.run(["nft", *args], input=script, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(f"nft {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def ports_in(env: dict[str, str]) -> set[int]:
    """Loopback ports named by env values (URLs, bootstrap lists) and by *PORT variables."""
    ports = {int(p) for value in env.values() for p in ADDRESS.findall(value)}
    ports |= {int(v) for k, v in env.items() if k.endswith("PORT") and v.isdigit()}
    return {p for p in ports if 0 < p < 65536}


class Egress:
    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.chain, self.set = f"run_{uid}", f"ports_{uid}"
        self.allowed: set[int] = set()

    @classmethod
    def create(cls, uid: int) -> "Egress | None":
        if shutil.which("nft") is None:
            return None
        egress = cls(uid)
        try:
            egress._install()
        except OSError:
            return None
        return egress

    def _install(self) -> None:
        family, table = TABLE
        self._remove_jumps()  # a grader that died left rules for this uid: start clean
        nft("-f", "-", script=f"""
add table {family} {table}
add chain {family} {table} output {{ type filter hook output priority 0; policy accept; }}
add set {family} {table} {self.set} {{ type inet_service; }}
flush set {family} {table} {self.set}
add chain {family} {table} {self.chain}
flush chain {family} {table} {self.chain}
add rule {family} {table} {self.chain} ct state established,related accept
add rule {family} {table} {self.chain} ip daddr 127.0.0.1 tcp dport @{self.set} accept
add rule {family} {table} {self.chain} ip6 daddr ::1 tcp dport @{self.set} accept
add rule {family} {table} {self.chain} counter reject
add rule {family} {table} output meta skuid {self.uid} jump {self.chain}
""")

    def allow(self, ports: set[int]) -> None:
        new = ports - self.allowed
        if new:
            family, table = TABLE
            nft("add", "element", family, table, self.set, "{ " + ", ".join(map(str, sorted(new))) + " }")
            self.allowed |= new

    def remove(self) -> None:
        family, table = TABLE
        self._remove_jumps()
        for kind, name in (("chain", self.chain), ("set", self.set)):
            try:
                nft("delete", kind, family, table, name)
            except OSError:
                pass

    def _remove_jumps(self) -> None:
        family, table = TABLE
        try:
            listing = nft("-a", "list", "chain", family, table, "output")
        except OSError:
            return  # no table yet
        for handle in re.findall(rf"jump {self.chain} # handle (\d+)", listing):
            nft("delete", "rule", family, table, "output", "handle", handle)
