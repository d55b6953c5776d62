"""Unpack a submission archive (zip or tar) without trusting it.

Only regular files and folders are extracted: no absolute paths, no `..`, no links, devices or FIFOs,
no setuid bits. Sizes are counted as bytes are actually written (a zip's declared sizes can lie), so a
zip bomb stops at the cap. Everything a submission archive may contain is small source code: the caps
are generous for that and tiny for anything else.
"""
from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
JUNK = ("__MACOSX", ".DS_Store")  # what archivers add on their own


class UnsafeArchive(ValueError):
    """The archive breaks a rule (path, size, count) or cannot be read; the message says which."""


@dataclass(frozen=True)
class Limits:
    total_bytes: int = 64 * 2**20
    file_bytes: int = 16 * 2**20
    files: int = 5000


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
        self.limits, self.total, self.files = limits, 0, 0

    def copy(self, src: IO[bytes], dest: Path, name: str) -> None:
        self.files += 1
        if self.files > self.limits.files:
            raise UnsafeArchive(f"more than {self.limits.files} files")
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


def extract(archive: Path, dest: Path, limits: Limits = Limits()) -> list[str]:
    """Unpack `archive` into `dest` (created; must not exist yet). Returns what was skipped, and why."""
    dest.mkdir(parents=True)
    root = dest.resolve()
    budget, skipped = _Budget(limits), []
    try:
        if archive.name.lower().endswith(".zip"):
            opened = zipfile.ZipFile(archive)
            members, read = _members_zip(opened), opened.open
        else:
            opened = tarfile.open(archive, "r:*")
            members, read = _members_tar(opened), opened.extractfile
        with opened:
            for name, kind, info in members:
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
                    skipped.append(f"{name}: {kind} entries are not extracted")
    except UnsafeArchive:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise UnsafeArchive(f"cannot read {archive.name}: {e}") from None
    return skipped
