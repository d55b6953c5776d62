"""A submission's files, read without following its links out of it.

A submission is hostile input, and a symlink in it may point anywhere: `src -> /proc/self/cwd/services`
(resolved from whoever follows it: the kit's own folder), `/etc`, `../bob` (a classmate), a chain of
links that leaves on its last hop. The grader walks, hashes and copies a submission only through this
module, which judges every link with `lstat`/`readlink` and never asks the OS to resolve one:

- a link that resolves (following links, each judged the same way) to a place inside the submission is
  kept, and copied as the same relative link: inside the copy it resolves to the copy's own files;
- every other link (absolute, climbing out with `..`, through /proc, a loop, or via another such link)
  is dropped, with a note saying which and where it pointed.

Nothing is resolved relative to the grader's working directory. Hard links are regular files: they are
copied as their content (the kernel's protected_hardlinks lets a user link only files they may read
already, and archives and git never carry them). FIFOs, sockets and devices are skipped unread.
"""
from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

MAX_HOPS = 40  # links followed while resolving one path (the kernel's ELOOP limit)
NOT_SUBMITTED = frozenset({"__MACOSX", "__pycache__", ".git", ".venv", "node_modules"})  # never copied or hashed


class Refused(ValueError):
    """A submission that cannot be graded safely as it is (a link, an unsafe archive): the message says
    why, and that student's row carries it."""


def not_submitted(name: str) -> bool:
    return name in NOT_SUBMITTED


def resolves_inside(root: Path, link: Path) -> bool:
    """Whether the symlink `link` (inside `root`) leads to a place inside `root`, judging every link on
    the way by its text alone (no link is followed by the OS). A dangling target inside counts as inside."""
    try:
        start = PurePosixPath(link.relative_to(root))
    except ValueError:
        return False
    return _resolve(root, list(start.parent.parts), os.readlink(link), MAX_HOPS) is not None


def _resolve(root: Path, at: list[str], target: str, hops: int) -> list[str] | None:
    """The parts (relative to root) `target` names when read in folder `at`, or None if it leaves root."""
    if hops <= 0 or target.startswith("/"):
        return None
    parts = list(at)
    pending = [p for p in target.split("/") if p not in ("", ".")]
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not parts:
                return None  # above the submission
            parts.pop()
            continue
        here = root.joinpath(*parts, part)
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            parts.append(part)  # does not exist (yet): names a place inside, nothing to follow
            continue
        if stat.S_ISLNK(mode):
            hops -= 1
            inner = os.readlink(here)
            if hops <= 0 or inner.startswith("/"):
                return None
            pending = [p for p in inner.split("/") if p not in ("", ".")] + pending
            continue
        parts.append(part)
    return parts


@dataclass
class Walked:
    """What a walk found besides folders and regular files: links kept or dropped, and skipped entries."""

    dropped: list[str] = field(default_factory=list)  # notes: links out of the submission, not followed
    skipped: list[str] = field(default_factory=list)  # notes: FIFOs, sockets, devices

    def notes(self, limit: int = 20) -> list[str]:
        found = self.dropped + self.skipped
        return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


def _link_note(rel: str, target: str) -> str:
    return f"{rel}: a link out of the submission (-> {target!r}) was not followed"


def walk(root: Path, skip: Callable[[str], bool] = not_submitted,
         found: Walked | None = None) -> Iterator[tuple[str, str, Path]]:
    """Every entry under `root` as (relative path, kind, path), kind one of "dir", "file", "link" (a link
    that stays inside; its text is os.readlink(path)). Links out are recorded in `found.dropped`, other
    entries in `found.skipped`; neither is yielded. Folders are never entered through a link."""
    found = found if found is not None else Walked()
    root = Path(root)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if skip(entry.name):
                continue
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):
                if resolves_inside(root, path):
                    yield rel, "link", path
                else:
                    found.dropped.append(_link_note(rel, os.readlink(path)))
            elif stat.S_ISDIR(mode):
                yield rel, "dir", path
                stack.append(path)
            elif stat.S_ISREG(mode):
                yield rel, "file", path
            else:
                found.skipped.append(f"{rel}: not a regular file (FIFO, socket or device): skipped")


def open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file at `path`; refuses a link or anything else (no FIFO
    is ever opened for reading: O_NONBLOCK, then fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return fd


def links_out(root: Path, skip: Callable[[str], bool] = not_submitted) -> list[str]:
    """Notes for every link in `root` that leads out of it (empty: the folder can be used in place)."""
    found = Walked()
    for _ in walk(root, skip, found):
        pass
    return found.dropped


def copy_tree(src: Path, dest: Path, skip: Callable[[str], bool] = not_submitted) -> list[str]:
    """Copy the submission at `src` to `dest` (created): folders, regular files (mode bits without
    setuid/setgid, mtimes kept) and links that stay inside; returns notes for what was left out."""
    found = Walked()
    dest.mkdir(parents=True)
    for rel, kind, path in walk(src, skip, found):
        target = dest / rel
        if kind == "dir":
            target.mkdir()
        elif kind == "link":
            os.symlink(os.readlink(path), target)
        else:
            fd = open_regular(path)
            with os.fdopen(fd, "rb") as reader, open(target, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
                info = os.fstat(fd)
            os.chmod(target, stat.S_IMODE(info.st_mode) & 0o777 & ~0o022 | 0o600)
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))  # bytecode caches stay valid
    return found.notes()
