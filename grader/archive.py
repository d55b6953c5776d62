"""Unpack a submission archive (zip or tar) without trusting it.

Only regular files and folders are extracted: no absolute paths, no `..`, no links, devices or FIFOs,
no setuid bits. Every entry counts against the cap (folders and links too). A member whose declared
size is over the caps, and a tar's pax or GNU long-name header over HEADER_BYTES, is refused before
a byte of it is read; sizes are also counted as bytes are actually written (a zip's declared sizes can
lie), so a zip bomb stops at the cap. Everything a submission archive may contain is small source
code: the caps are generous for that and tiny for anything else.

`extract` unpacks in a child process of its own (`python -m grader.archive`) that limits itself
first (address space, CPU time, file size) and is killed at a wall-clock deadline: a hostile archive
costs that child, never the batch, and is refused with the reason for that student only.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from .untrusted import Refused

SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
JUNK = ("__MACOSX", ".DS_Store")  # what archivers add on their own


class UnsafeArchive(Refused):
    """The archive breaks a rule (path, size, count) or cannot be read; the message says which."""


@dataclass(frozen=True)
class Limits:
    total_bytes: int = 64 * 2**20
    file_bytes: int = 16 * 2**20
    files: int = 5000  # entries of every kind: files, folders, links, devices
    header_bytes: int = 64 * 2**10  # one pax or GNU long-name header
    memory: int = 1 << 30  # the unpacking child's address space
    seconds: float = 120.0  # the unpacking child's CPU time and wall-clock deadline


HEADER_BYTES = Limits.header_bytes
NOTES = 20  # notes on what was skipped, at most (they travel on a command line and into the report)
CLASS_LIMITS = Limits(total_bytes=2 << 30, files=200_000)  # a whole class in one archive (its archives within)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SUFFIXES)


def stem(path: Path) -> str:
    """The name without its archive suffix: alice.tar.gz -> alice."""
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def safe_relative(name: str) -> PurePosixPath | None:
    """The member's path relative to the destination, or None to skip it (junk, a folder entry)."""
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchive(f"absolute path in archive: {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"path escapes the folder: {name!r}")
    if not parts or any(p in JUNK for p in parts):
        return None
    return PurePosixPath(*parts)


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits, self.total, self.entries, self.declared = limits, 0, 0, 0

    def entry(self, name: str, declared: int = 0) -> None:
        """One more entry, of any kind, declaring `declared` bytes: refused before anything is read."""
        self.entries += 1
        if self.entries > self.limits.files:
            raise UnsafeArchive(f"more than {self.limits.files} entries (files, folders and links count)")
        if declared > self.limits.file_bytes:
            raise UnsafeArchive(f"{name}: declares {declared} bytes, larger than {self.limits.file_bytes >> 20} MiB")
        self.declared += max(0, declared)
        if self.declared > self.limits.total_bytes:
            raise UnsafeArchive(f"declares more than {self.limits.total_bytes >> 20} MiB in all")

    def copy(self, src: IO[bytes], dest: Path, name: str) -> None:
        written = 0
        with open(dest, "wb") as out:
            while chunk := src.read(1 << 16):
                written += len(chunk)
                self.total += len(chunk)
                if written > self.limits.file_bytes:
                    raise UnsafeArchive(f"{name}: larger than {self.limits.file_bytes >> 20} MiB")
                if self.total > self.limits.total_bytes:
                    raise UnsafeArchive(f"unpacks to more than {self.limits.total_bytes >> 20} MiB")
                out.write(chunk)


class _CappedTarInfo(tarfile.TarInfo):
    """A tar header whose pax or GNU long-name extension is refused over HEADER_BYTES before tarfile
    reads it whole into memory (a 1.5 GiB pax header in a 12 KB tar.bz2)."""

    header_bytes = HEADER_BYTES

    def _capped(self) -> None:
        if self.size > self.header_bytes:
            raise UnsafeArchive(f"a tar header extension of {self.size} bytes (over {self.header_bytes >> 10} KiB)")

    def _proc_pax(self, tarfile):
        self._capped()
        return super()._proc_pax(tarfile)

    def _proc_gnulong(self, tarfile):
        self._capped()
        return super()._proc_gnulong(tarfile)


def _members_zip(zf: zipfile.ZipFile) -> Iterator[tuple[str, str, zipfile.ZipInfo]]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if info.is_dir():
            yield info.filename, "dir", info
        elif stat.S_ISLNK(mode):
            yield info.filename, "link", info
        else:
            yield info.filename, "file", info


def _members_tar(tf: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    for info in tf:
        kind = "dir" if info.isdir() else "file" if info.isreg() else "link" if info.issym() or info.islnk() else "special"
        yield info.name, kind, info


def _extract_here(archive: Path, dest: Path, limits: Limits) -> list[str]:
    """Unpack in this process (the child `extract` starts): the rules above, no process limits."""
    dest.mkdir(parents=True)
    root = dest.resolve()
    budget, skipped = _Budget(limits), []
    if archive.name.lower().endswith(".zip"):
        opened = zipfile.ZipFile(archive)
        if len(opened.infolist()) > limits.files:
            raise UnsafeArchive(f"more than {limits.files} entries ({len(opened.infolist())}; files, folders "
                                f"and links count)")
        members, read, size = _members_zip(opened), opened.open, lambda info: info.file_size
    else:
        _CappedTarInfo.header_bytes = limits.header_bytes
        opened = tarfile.open(archive, "r:*", tarinfo=_CappedTarInfo)
        members, read, size = _members_tar(opened), opened.extractfile, lambda info: info.size
    with opened:
        for name, kind, info in members:
            budget.entry(name, size(info) if kind == "file" else 0)
            rel = safe_relative(name)
            if rel is None:
                continue
            target = root.joinpath(*rel.parts)
            if root not in target.resolve().parents and target.resolve() != root:
                raise UnsafeArchive(f"path escapes the folder: {name!r}")  # e.g. through a folder symlink
            if kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "file":
                target.parent.mkdir(parents=True, exist_ok=True)
                src = read(info)
                if src is None:
                    continue
                with src:
                    budget.copy(src, target, name)
            else:
                skipped.append(f"{name[:200]}: {kind} entries are not extracted")
    return skipped[:NOTES] + ([f"... and {len(skipped) - NOTES} more"] if len(skipped) > NOTES else [])


def extract(archive: Path, dest: Path, limits: Limits = Limits()) -> list[str]:
    """Unpack `archive` into `dest` (created; must not exist yet) in a limited child process with a
    deadline. Returns what was skipped, and why; raises UnsafeArchive (and removes `dest`) on refusal."""
    argv = [sys.executable, "-m", "grader.archive", str(archive), str(dest), json.dumps(asdict(limits))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=limits.seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        shutil.rmtree(dest, ignore_errors=True)
        raise UnsafeArchive(f"unpacking {archive.name} took longer than {limits.seconds:.0f} s: stopped") from None
    try:
        answer = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = {}
    if proc.returncode == 0 and "skipped" in answer:
        return answer["skipped"]
    shutil.rmtree(dest, ignore_errors=True)
    if "refused" in answer:
        raise UnsafeArchive(answer["refused"])
    if proc.returncode < 0:
        why = {signal.SIGXCPU: f"used more than {limits.seconds:.0f} s of CPU",
               signal.SIGKILL: "was killed (out of memory?)"}.get(-proc.returncode, f"died of signal {-proc.returncode}")
    else:
        why = f"failed: {err.decode(errors='replace').strip()[-300:]}"
    raise UnsafeArchive(f"unpacking {archive.name} {why}")


def _limit_self(limits: Limits) -> None:
    import resource

    cpu = int(limits.seconds) + 1
    for what, value in ((resource.RLIMIT_AS, limits.memory), (resource.RLIMIT_CPU, cpu),
                        (resource.RLIMIT_FSIZE, limits.file_bytes + (1 << 16)), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(what, (value, value))


def main(argv: list[str]) -> int:
    archive, dest, limits = Path(argv[0]), Path(argv[1]), Limits(**json.loads(argv[2]))
    _limit_self(limits)
    try:
        skipped = _extract_here(archive, dest, limits)
    except UnsafeArchive as e:
        answer = {"refused": str(e)[:500]}
    except MemoryError:
        answer = {"refused": f"unpacking {archive.name} needs more than {limits.memory >> 20} MiB of memory"}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError) as e:
        answer = {"refused": f"cannot read {archive.name}: {str(e)[:300]}"}
    else:
        answer = {"skipped": skipped}
    print(json.dumps(answer), flush=True)
    return 0 if "skipped" in answer else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
