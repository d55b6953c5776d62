"""A uid of its own for each run: from a reserved range, held by a file lock while the run lasts.

No /etc/passwd entries are created: `setpriv` switches to a numeric uid, and a uid nobody else
uses owns nothing outside the run's own copy. The lock (flock) is released by the kernel when the
grader exits, so a crashed grader never leaks a uid.
"""
from __future__ import annotations

import fcntl
import os
import pwd
from pathlib import Path

# Far above the ranges distributions hand out (system < 1000, users < 60000, subuids from 100000
# in steps of 65536 usually start at 100000 and 165536 ...): override with LABKIT_SANDBOX_UIDS=FIRST-LAST.
DEFAULT_RANGE = (3_900_000, 3_909_999)
LOCK_DIR = Path(os.environ.get("LABKIT_SANDBOX_LOCKS", "/run/labkit-sandbox"))


class NoFreeUid(RuntimeError):
    pass


def uid_range() -> tuple[int, int]:
    raw = os.environ.get("LABKIT_SANDBOX_UIDS")
    if not raw:
        return DEFAULT_RANGE
    first, _, last = raw.partition("-")
    return int(first), int(last)


class UidLease:
    """One uid, exclusively ours until `release()` (or until this process exits)."""

    def __init__(self) -> None:
        LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        first, last = uid_range()
        start = first + int.from_bytes(os.urandom(2), "big") % (last - first + 1)  # spread parallel runs
        for i in range(last - first + 1):
            uid = first + (start - first + i) % (last - first + 1)
            if _has_passwd_entry(uid):
                continue
            fd = os.open(LOCK_DIR / f"uid-{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid = self.gid = uid
            self._fd: int | None = fd
            return
        raise NoFreeUid(f"every uid in {first}-{last} is in use by another run")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False
