"""Run an untrusted submission's services isolated (native runtime, grader running as root).

Tools (all well-kept, from Debian): bubblewrap (`bwrap`) builds a mount, PID, IPC and UTS namespace
in which only the system, the Python interpreter, the venv's third-party packages, the run's own
copy of the submission and a site dir holding `services/common` exist; util-linux `setpriv` drops
to the run's own uid with no capabilities and no_new_privs; util-linux `prlimit` sets rlimits; a
cgroup (v1 or v2, cgroups.py) caps memory and processes and lists what is left. See README.md.
"""
from __future__ import annotations

import functools
import itertools
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import psutil

from ..nemesis.crashpoints import CRASHSITE
from ..stack.procs import Guardian, ServerProcess
from ..untrusted import copy_tree
from .cgroups import Cgroup
from .firewall import Egress, ports_in
from .uids import UidLease

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMON = REPO_ROOT / "services" / "common"

# What a service may be told (DESIGN.md, "The service contract"), plus what the grader itself sets.
CONTRACT_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL", "AMQP_URL",
                 "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "LAB_NAMESPACE",
                 # the OTel SDK's own settings the grader hands over: without the long batch delay, spans
                 # would be exported before a SIGTERM and a service that never flushes would pass
                 "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_EXPORTER", "OTEL_BSP_SCHEDULE_DELAY")
# the crash site's settings (grader/nemesis/crashsite): without them a hold would count from the
# process's start (onto a replay) and a stall would last its default
GRADER_VARS = ("LABKIT_CRASH", "LABKIT_CRASH_CONTROL", "LABKIT_CRASH_MARKER", "LABKIT_CRASH_AFTER_S", "LABKIT_CRASH_WRITES",
               "LABKIT_STALL_SECONDS", "PYTHONUNBUFFERED")
MARKER_VAR = "LABKIT_CRASH_MARKER"
CONTROL_VAR = "LABKIT_CRASH_CONTROL"  # the grader's live arms: its folder is bound read-only at the same path
MARKER_MAX_BYTES = 64 * 1024


class SandboxError(RuntimeError):
    """The sandbox could not be set up (not the submission's fault)."""


@dataclass(frozen=True)
class Limits:
    """What one run (all of its services together) may use."""

    wall_time: float = 900.0         # seconds from open(); then everything it runs is killed
    memory: int = 1536 << 20         # bytes, all its processes (cgroup; RLIMIT_AS per process without one)
    processes: int = 512             # processes and threads of its uid (RLIMIT_NPROC, and pids.max)
    file_size: int = 64 << 20        # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 4096           # per process (RLIMIT_NOFILE)
    log_size: int = 8 << 20          # bytes of log per service life; the rest is dropped
    disk: int = 512 << 20            # its copy, HOME and markers together (a tmpfs of this size)
    cpus: float = 1.0                # CPU time of all its processes together, in CPUs (a cgroup quota)


class Sandbox:
    """One run's isolation: a uid of its own, a private copy of the submission, limits, a kill switch.

    Use as a context manager (or open()/close()); hand it to grader.launch.Service to start the
    run's services inside it. Every service of the run shares the uid, the copy and the cgroup.
    """

    def __init__(self, submission: Path, limits: Limits = Limits(), label: str = "run",
                 expose: tuple[str, ...] = ()) -> None:
        """`expose`: reference packages of `services` to make importable after all - only for the kit's
        own mutants, which are built on the reference (never for a learner's submission)."""
        self.submission = Path(submission).resolve()
        self.limits = limits
        self.label = label
        self.expose = expose
        self.root: Path | None = None
        self.lease: UidLease | None = None
        self.cgroup: Cgroup | None = None
        self.egress: Egress | None = None
        self.mounted = False  # root is a size-capped tmpfs
        self.procs: list[SandboxedProcess] = []
        self._lives = itertools.count()  # names each life's cgroup (restarts come from many threads)
        self.expired = False  # the wall-time limit fired
        self._timer: threading.Timer | None = None
        self._markers: dict[str, Path] = {}  # private marker path -> where the grader expects it
        self._copied: dict[str, tuple[int, int]] = {}  # private marker path -> (size, mtime) copied
        self._marker_lock = threading.Lock()
        self._closed = threading.Event()
        self.notes: list[str] = []  # what the copy left out (links out of the submission), for the report
        self.readable: set[Path] = set()  # grader folders the services may read (the crash site's arms)

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> "Sandbox":
        reason = isolation_problem()
        if reason:
            raise SandboxError(reason)
        if not self.submission.is_dir():
            raise SandboxError(f"submission folder {self.submission} does not exist")
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        self.lease = UidLease()
        uid = self.lease.uid
        self.root = Path(tempfile.mkdtemp(prefix=f"labkit-sandbox-{self.label}-"))
        Guardian.get().watch_dir(self.root)
        self.mounted = _mount_tmpfs(self.root, self.limits.disk)  # a full disk stays the run's problem
        if self.mounted:
            Guardian.get().watch_mount(self.root)
        os.chmod(self.root, 0o711)  # the uid may pass through to its own dirs, not list the others
        try:
            self.notes = _copy_untrusted(self.submission, self.workdir)
        except (OSError, shutil.Error) as e:
            raise SandboxError(f"cannot copy the submission into its sandbox (over {self.limits.disk >> 20} MiB?): "
                               f"{str(e)[:300]}") from None
        (self.workdir / ".home").mkdir(exist_ok=True)
        self.markers.mkdir()
        _chown_tree(self.workdir, uid)
        os.chown(self.markers, uid, uid)
        os.chmod(self.workdir, 0o700)
        _build_site(self.site, self.expose)
        Cgroup.sweep("labkit-labkit-sandbox-", lambda name: (self.root.parent / name.removeprefix("labkit-")).exists())
        self.cgroup = Cgroup.create(f"labkit-{self.root.name}", self.limits.memory, self.limits.processes,
                                    self.limits.cpus)
        self.egress = Egress.create(uid)
        self._timer = threading.Timer(self.limits.wall_time, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        """Kill everything the submission started, then remove its copy and give back its uid."""
        if self._timer:
            self._timer.cancel()
        self._closed.set()
        self.kill_all()
        if self.cgroup:
            self.cgroup.remove()
            self.cgroup = None
        if self.egress:
            self.egress.remove()
            self.egress = None
        if self.root:
            if self.mounted:
                subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True, timeout=30)
                Guardian.get().forget_mount(self.root)
            shutil.rmtree(self.root, ignore_errors=True)
            Guardian.get().forget_dir(self.root)
            self.root = None
        if self.lease:
            self.lease.release()
            self.lease = None

    def __enter__(self) -> "Sandbox":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- paths ---------------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if self.root is None:
            raise SandboxError("sandbox not open")
        return self.root / name

    @property
    def workdir(self) -> Path:
        """The submission's own copy, owned by its uid: its working directory and HOME's parent."""
        return self._dir("work")

    @property
    def site(self) -> Path:
        """Read-only: `services/common` only (the learner-facing library)."""
        return self._dir("site")

    @property
    def markers(self) -> Path:
        return self._dir("markers")

    @property
    def uid(self) -> int:
        assert self.lease is not None, "sandbox not open"
        return self.lease.uid

    # --- running -------------------------------------------------------------------------------

    def environment(self, env: dict[str, str], allowed: Iterable[str] = ()) -> dict[str, str]:
        """The allow-listed env: the service contract, `allowed` (lab-specific), the grader's own
        crash-point variables, and PATH/LANG/HOME/PYTHONPATH pointing into the sandbox."""
        keep = set(CONTRACT_VARS) | set(GRADER_VARS) | set(allowed)
        out = {k: v for k, v in env.items() if k in keep}
        if MARKER_VAR in out:  # the grader's results dir is invisible inside: write next door, copied back
            with self._marker_lock:
                private = self.markers / f"{len(self._markers)}-{Path(out[MARKER_VAR]).name}"
                self._markers[str(private)] = Path(out[MARKER_VAR])
                if len(self._markers) == 1:
                    threading.Thread(target=self._copy_markers, name="sandbox-markers", daemon=True).start()
            out[MARKER_VAR] = str(private)
        if CONTROL_VAR in out:
            self.readable.add(Path(out[CONTROL_VAR]).parent)
        hook = [str(CRASHSITE)] if "LABKIT_CRASH" in out or CONTROL_VAR in out else []  # first: a learner's sitecustomize must not hide it
        out.update({
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.workdir / ".home"),
            "TMPDIR": "/tmp",
            "PYTHONPATH": os.pathsep.join([*hook, str(self.workdir), str(self.site)]),
            "PYTHONUNBUFFERED": "1",
        })
        return out

    def command(self, argv: list[str], cwd: Path, cgroup: Cgroup | None = None) -> list[str]:
        """argv wrapped: into the cgroup, under rlimits, into the namespaces, down to the run's uid."""
        uid = self.uid
        limits = [f"--nproc={self.limits.processes}", f"--fsize={self.limits.file_size}",
                  f"--nofile={self.limits.open_files}", "--core=0"]
        if self.cgroup is None:  # no memory cgroup: a per-process address-space cap is the fallback
            limits.append(f"--as={self.limits.memory * 4}")  # virtual, generous: threads reserve a lot
        # No --die-with-parent: its PR_SET_PDEATHSIG fires when the grader *thread* that started bwrap
        # ends (a fault's watcher thread restarting a service), killing a healthy service. The process
        # group (our kill, the guardian's) and the cgroup end the namespace instead.
        jail = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", "labkit-sandbox", *_mounts(self), "--chdir", str(cwd),
                "--", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                "--inh-caps=-all", "--bounding-set=-all", "--"]
        enter = []
        cgroup = cgroup or self.cgroup
        if cgroup:  # join the cgroup before anything else runs, so every descendant is in it
            enter = ["/bin/sh", "-c", 'while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; exec "$@"',
                     "labkit-enter", *map(str, cgroup.procs_files), "--"]
        return [*enter, "prlimit", *limits, "--", *jail, *argv]

    def spawn(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path | None = None,
              allowed: Iterable[str] = ()) -> "SandboxedProcess":
        if self.expired:
            raise SandboxError(f"the run's wall-time limit ({self.limits.wall_time:.0f} s) is over")
        cwd = cwd or self.workdir
        env = self.environment(env, allowed)
        if self.egress:  # only where the contract points: the proxy, not the broker behind it
            self.egress.allow(ports_in(env))
        cgroup = self.cgroup.child(f"life-{next(self._lives)}") if self.cgroup else None
        proc = SandboxedProcess(self, cgroup, self.command(argv, cwd, cgroup), log, env=env, cwd=self.workdir,
                                log_limit=self.limits.log_size)
        self.procs.append(proc)
        return proc

    def pids(self) -> set[int]:
        """Every process of the run still alive (the cgroup's, or its uid's where there is no cgroup)."""
        if self.cgroup:
            return self.cgroup.pids()
        found = set()
        for p in psutil.process_iter(["uids"]):
            if p.info["uids"] and p.info["uids"].real == self.uid:
                found.add(p.pid)
        return found

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.popen.returncode is None:  # lives already reaped are done (and their PIDs may be reused)
                proc.kill()
        if self.cgroup:
            self.cgroup.kill()

    def _expire(self) -> None:
        self.expired = True
        self.kill_all()

    def _copy_markers(self) -> None:
        """While the run lasts: a held service writes its marker long before it dies."""
        while not self._closed.wait(0.02):
            self.collect_markers()

    def collect_markers(self) -> None:
        """Copy crash markers the services wrote back to where the grader reads them - carefully:
        the file is the submission's (it could be a FIFO, a symlink or huge)."""
        with self._marker_lock:
            for private, public in self._markers.items():
                try:
                    fd = os.open(private, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                with os.fdopen(fd, "rb") as f:
                    info = os.fstat(fd)
                    if not stat.S_ISREG(info.st_mode) or self._copied.get(private) == (info.st_size, info.st_mtime_ns):
                        continue
                    data = f.read(MARKER_MAX_BYTES)
                tmp = public.with_name(public.name + ".labkit-tmp")
                tmp.write_bytes(data)
                os.replace(tmp, public)
                self._copied[private] = (info.st_size, info.st_mtime_ns)


class SandboxedProcess(ServerProcess):
    """A ServerProcess whose polite stop reaches the submission, not the sandbox around it.

    bwrap does not forward signals, so `stop` signals the processes running as the run's uid (`_ask`)
    and lets them shut down; `kill` is the usual SIGKILL to the
    group, which ends the namespace and everything in it."""

    def __init__(self, sandbox: Sandbox, cgroup: Cgroup | None, argv: list[str], log: Path, **kwargs) -> None:
        self.sandbox = sandbox
        self.cgroup = cgroup  # this life's own group inside the run's: what kill() must empty
        super().__init__(argv, log, **kwargs)

    def _submission_procs(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for child in children:
            try:
                if child.uids().real == self.sandbox.uid:
                    out.append(child)
            except psutil.NoSuchProcess:
                pass
        return out

    def _signal_group(self, sig: int) -> None:
        if self.popen.returncode is not None and self.cgroup is not None:
            return  # reaped: its PID may belong to someone else by now; the cgroup reaches what is left
        super()._signal_group(sig)

    def _ask(self, sig: int) -> None:
        for proc in self._submission_procs():
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def kill(self) -> None:
        """SIGKILL the group; the PID namespace ends with it. Returns once all of it is gone."""
        try:
            inside = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            inside = []
        super().kill()
        if self.cgroup:  # the kernel tears the namespace down asynchronously: wait until the group is empty
            self.cgroup.remove()
        else:
            deadline = time.monotonic() + 5
            while (left := [p for p in inside if _running(p)]) and time.monotonic() < deadline:
                time.sleep(0.01)
            for proc in left:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
        self._settle()

    def alive(self) -> bool:
        if self.popen.poll() is None:
            return True
        self._settle()
        return False

    def _settle(self) -> None:
        """Once it exited: its crash marker where the grader looks (before anyone sees it dead), and
        Popen's returncode as unsandboxed (bwrap reports death by signal N as 128+N; Popen says -N)."""
        self.sandbox.collect_markers()
        if self.popen.returncode is not None and self.popen.returncode > 128:
            self.popen.returncode = -(self.popen.returncode - 128)

    def exit_code(self) -> int | None:
        if self.popen.poll() is not None:
            self._settle()
        return self.popen.returncode


# --- helpers ---------------------------------------------------------------------------------------

def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie's parent may be slow to reap it; it runs nothing)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@functools.lru_cache(maxsize=1)
def isolation_problem() -> str | None:
    """None when submissions can be isolated here, else why not (and what to do). Asked once."""
    if os.geteuid() != 0:
        return ("isolating a submission as a uid of its own needs root: run `labkit grade` as root "
                "(sudo, a CI job or a container), or pass --trust-submissions to grade without isolation")
    missing = [tool for tool in ("bwrap", "setpriv", "prlimit") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install bubblewrap util-linux"
    probe = subprocess.run(["bwrap", "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc",
                            "--dev", "/dev", "--", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {probe.stderr.strip()[-300:]}"
    return None


def _mount_tmpfs(path: Path, size: int) -> bool:
    """A tmpfs of `size` bytes on `path` (root only; where mounting is refused, a plain dir stays)."""
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711,nosuid,nodev", "labkit-sandbox",
                          str(path)], capture_output=True, timeout=30)
    return out.returncode == 0


def _copy_untrusted(src: Path, dest: Path) -> list[str]:
    """Copy a submission without following a link out of it or opening anything but regular files
    (grader/untrusted.py); caches and VCS data stay behind. Returns notes on what was left out."""
    return copy_tree(src, dest)


def _chown_tree(top: Path, uid: int) -> None:
    os.lchown(top, uid, uid)
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, uid)


def _build_site(site: Path, expose: tuple[str, ...] = ()) -> None:
    """`services/common` and nothing else of `services`: the reference solutions stay out of reach."""
    (site / "services").mkdir(parents=True)
    (site / "services" / "__init__.py").write_text("")
    for package in ("common", *expose):
        shutil.copytree(COMMON.parent / package, site / "services" / package)  # with its bytecode: copy2 keeps mtimes
    shutil.copy2(Path(__file__).with_name("sitecustomize.py"), site / "sitecustomize.py")  # pika under the egress filter
    for folder, _, files in os.walk(site):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def _editable_pths(purelib: Path) -> list[Path]:
    """.pth files that put the kit itself on sys.path (pip install -e): masked inside the sandbox."""
    found = []
    for pth in purelib.glob("*.pth"):
        try:
            text = pth.read_text(errors="replace")
        except OSError:
            continue
        if pth.name.startswith("__editable__") or str(REPO_ROOT) in text:
            found.append(pth)
    return found


def _mounts(sandbox: Sandbox) -> list[str]:
    # /tmp and /dev/shm private, sticky and writable by the run's uid (TMPDIR=/tmp: what works under
    # `labkit check` works here), capped (their pages count against the cgroup's memory as well)
    disk = sandbox.limits.disk
    args = ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(disk), "--tmpfs", "/tmp",
            "--perms", "1777", "--size", str(max(disk // 8, 1 << 20)), "--tmpfs", "/dev/shm"]
    for top in ("usr", "bin", "lib", "lib32", "lib64", "sbin", "etc"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    made = {Path("/"), Path("/tmp"), Path("/usr"), Path("/etc")}

    def bind(src: Path, dest: Path, flag: str = "--ro-bind") -> None:
        for parent in reversed(dest.parents):  # bwrap would create missing parents 0700: make them 0755
            if parent not in made and not any(parent.is_relative_to(m) for m in _bound):
                args.extend(["--perms", "0755", "--dir", str(parent)])
                made.add(parent)
        args.extend([flag, str(src), str(dest)])
        _bound.append(dest)

    _bound: list[Path] = [Path("/usr"), Path("/etc")]
    purelib = Path(sysconfig.get_paths()["purelib"])
    for prefix in sorted({Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parents[1]}):
        if not any(prefix.is_relative_to(b) for b in _bound):
            bind(prefix, prefix)
    for pth in _editable_pths(purelib):
        args += ["--ro-bind", "/dev/null", str(pth)]
    bind(CRASHSITE, CRASHSITE)
    bind(sandbox.site, sandbox.site)
    bind(sandbox.workdir, sandbox.workdir, "--bind")
    bind(sandbox.markers, sandbox.markers, "--bind")
    for folder in sorted(sandbox.readable):
        bind(folder, folder)
    return args
