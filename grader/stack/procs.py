"""Server processes on this host: spawn, watch, stop - always by the PID we started."""
from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .base import StackError


class Guardian:
    """Client side of grader/stack/guardian.py: one guardian process per Python process."""

    _instance: "Guardian | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "grader.stack.guardian"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # survives a Ctrl-C or killpg aimed at us
            text=True,
            env={**os.environ, "PYTHONPATH": _package_root()},
        )
        atexit.register(self.close)

    @classmethod
    def get(cls) -> "Guardian":
        with cls._lock:
            if cls._instance is None or cls._instance._proc.poll() is not None:
                cls._instance = Guardian()
            return cls._instance

    def _say(self, line: str) -> None:
        with self._lock:
            if self._proc.stdin and not self._proc.stdin.closed:
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()

    def watch_pid(self, pid: int) -> None:
        self._say(f"+pid {pid}")

    def forget_pid(self, pid: int) -> None:
        self._say(f"-pid {pid}")

    def watch_dir(self, path: str | Path) -> None:
        self._say(f"+dir {path}")

    def forget_dir(self, path: str | Path) -> None:
        self._say(f"-dir {path}")

    def watch_mount(self, path: str | Path) -> None:
        self._say(f"+mnt {path}")

    def forget_mount(self, path: str | Path) -> None:
        self._say(f"-mnt {path}")

    def watch_container(self, container_id: str) -> None:
        self._say(f"+ctr {container_id}")

    def forget_container(self, container_id: str) -> None:
        self._say(f"-ctr {container_id}")

    def close(self) -> None:
        """Normal exit: whatever is still registered gets cleaned up by the guardian."""
        with self._lock:
            if self._proc.stdin and not self._proc.stdin.closed:
                self._proc.stdin.close()
        self._proc.wait(timeout=30)


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unprivileged_user() -> str | None:
    """Who the servers the kit starts run as when we are root (never root: PostgreSQL refuses it, and
    a server is the first thing a hostile row or key reaches); None if not root. `nobody` exists on
    a fresh Debian machine; its group (nogroup) is what the servers get, never root's group 0."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("LABKIT_UNPRIVILEGED_USER", "nobody")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise StackError(f"running as root needs an unprivileged user for the servers; user {name!r} does not exist "
                         f"(set LABKIT_UNPRIVILEGED_USER or: useradd --system {name})") from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise StackError(f"LABKIT_UNPRIVILEGED_USER={name!r} has uid or gid 0: the servers need an unprivileged one")
    return name


def account(user: str | None) -> dict:
    """Popen arguments that run a process as `user` with its own primary group and no other
    (Popen(user=) alone keeps the caller's groups: root's group 0)."""
    if user is None:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


class WorkDir:
    """A temp dir for one server's data and logs; removed on close, or by the guardian if we die."""

    def __init__(self, label: str, owner: str | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"labkit-{label}-"))
        Guardian.get().watch_dir(self.path)
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(self.path, pw.pw_uid, pw.pw_gid)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        Guardian.get().forget_dir(self.path)


def tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a file, reading at most `max_bytes` from its end (logs can be huge)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError:
        return "(no log)"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class CappedLog(threading.Thread):
    """Copies a process's output from a pipe into its log file, up to `limit` bytes per life; the rest
    is read and dropped (the process keeps running, the disk does not fill)."""

    def __init__(self, source, log_file, limit: int) -> None:
        super().__init__(name=f"log-cap-{log_file.name}", daemon=True)
        self.source, self.log_file, self.room = source, log_file, limit
        self.dropped = 0

    def run(self) -> None:
        try:
            self._copy()
        except (OSError, ValueError):  # the log was closed under us (a stop that did not wait)
            pass
        finally:
            self.source.close()

    def _copy(self) -> None:
        for chunk in iter(lambda: self.source.read1(65536), b""):
            if self.room > 0:
                self.log_file.write(chunk[:self.room])
                self.log_file.flush()
                if len(chunk) >= self.room:
                    self.log_file.write(b"\n--- labkit: log truncated here (size cap); the rest is dropped ---\n")
                    self.log_file.flush()
                self.dropped += max(0, len(chunk) - self.room)
                self.room -= len(chunk)
            else:
                self.dropped += len(chunk)


class ServerProcess:
    """One long-running process in its own process group, output in a log file.

    `log_limit` caps what one life of the process may write into its log (output goes through a
    pipe and a copier thread then); None writes straight into the file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, user: str | None = None, log_limit: int | None = None) -> None:
        self.argv = argv
        self.log = log
        self._log_file = open(log, "ab")
        self._copier: CappedLog | None = None
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log_file if log_limit is None else subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env if env is not None else _clean_env(), cwd=cwd,
                start_new_session=True, **account(user),
            )
        except FileNotFoundError as e:
            self._log_file.close()
            raise StackError(f"cannot run {argv[0]}: {e}") from e
        Guardian.get().watch_pid(self.popen.pid)
        if log_limit is not None:
            self._copier = CappedLog(self.popen.stdout, self._log_file, log_limit)
            self._copier.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_code(self) -> int | None:
        """None while running; -N when killed by signal N."""
        return self.popen.poll()

    def check_alive(self, what: str) -> None:
        """Raise with the log's tail if the process already exited (fail fast, not at timeout)."""
        if not self.alive():
            raise StackError(f"{what} exited with code {self.popen.returncode} during start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log, lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Ask politely with `sig`, then SIGKILL the whole group after `timeout`."""
        if self.alive():
            self._ask(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)  # also reaches children left in the group
        self.popen.wait()
        if self._copier is not None:
            self._copier.join(10)  # EOF once every writer is gone
        self._log_file.close()
        Guardian.get().forget_pid(self.pid)

    def _ask(self, sig: int) -> None:
        """Deliver a polite signal (stop's first step)."""
        self._signal_group(sig)

    def _signal_group(self, sig: int) -> None:
        if self.popen.returncode is not None:
            # Reaped: its PID, and so the group id, may already be another process's (PIDs wrap).
            # Until reaped (a zombie holds the PID) the group can only be ours.
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _clean_env() -> dict[str, str]:
    """Servers get a minimal env: variables meant for services (e.g. OTEL_*) must not leak in."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {k: v for k, v in os.environ.items() if k in keep}
