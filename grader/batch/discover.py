"""Find the submissions in what an instructor hands over, and make each a folder to grade.

Accepted as SUBMISSIONS:
- a folder of submissions, each a folder, a git clone or a zip/tar archive (named after the student);
- a GitHub Classroom export (`gh classroom clone student-repos`: `<assignment>-<login>` clones) -
  the common `<assignment>-` prefix is dropped from the names;
- a Gradescope export ("Export Submissions": `submission_<id>/` folders and `submission_metadata.yml`
  naming the submitters) - names come from the metadata;
- one archive holding any of the above, or a single submission (a folder whose services are there).
A submission's services may sit a few folders deep (an archive of a folder, `src/`): the graded
folder is the shallowest one holding one of the lab's service packages. Inside a submission no link is
followed (grader/untrusted.py): a folder reached through a symlink is never its service root, and its
fingerprint hashes a link's text, not what it points at. An entry of SUBMISSIONS that is a link gets a
row saying it was refused (SUBMISSIONS may be one student's upload: Gradescope's /autograder/submission).

Names: a student's name comes from what they handed in (a folder or archive name, Gradescope's
metadata), so it is made safe as one folder name (`safe_name`) and unique in the class, also where
the file system ignores case; the batch puts each student's folder under `--out/students/`, where no
file of the batch's own can be.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..lab import Lab
from ..untrusted import NOT_SUBMITTED, Refused, Walked, open_regular, walk
from ..archive import CLASS_LIMITS, SUFFIXES, Limits, extract, is_archive, stem

SKIP_NAMES = set(NOT_SUBMITTED)
GRADESCOPE_METADATA = "submission_metadata.yml"
NAME_BYTES = 80  # a student's folder name, at most (UTF-8)


@dataclass
class Submission:
    name: str  # the student (or group): unique in the class, safe as a folder name
    source: Path  # what the instructor gave: a folder, a git clone or an archive
    people: list[str] = field(default_factory=list)  # submitters, when the export names them
    notes: list[str] = field(default_factory=list)  # what unpacking it left out (links, devices), for its report

    @property
    def kind(self) -> str:
        if self.source.is_symlink():
            return "link"
        if is_archive(self.source):
            return "archive"
        return "git" if (self.source / ".git").exists() else "folder"


def safe_name(name: str) -> str:
    """`name` as one safe folder name: letters and digits of any script (NFKC), `.`, `_`, `@`, `+`, `-`;
    anything else (separators, controls, bidi and other format characters, spaces) becomes `_`. Never
    empty, never dots only, never starting with `.` or `-` (hidden, an option) or `+`/`@`/`=` (a
    spreadsheet formula), at most NAME_BYTES bytes."""
    name = unicodedata.normalize("NFKC", str(name))
    kept = "".join(ch if ch.isalnum() or ch in "._@+-" else "_" for ch in name)
    kept = re.sub(r"_+", "_", kept).strip("._-+@=") or "submission"
    while len(kept.encode()) > NAME_BYTES:
        kept = kept[:-1]
    return kept.rstrip("._-+@") or "submission"



def _entries(folder: Path) -> list[Path]:
    """The submissions in a class folder: folders, archives, and links (each refused with a row saying
    so: the folder may be a submission itself, Gradescope's /autograder/submission)."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.name not in SKIP_NAMES
                  and (_real_dir(p) or is_archive(p) or (p.is_symlink() and (p.is_dir() or
                                                                           p.name.lower().endswith(SUFFIXES)))))


def _real_dir(path: Path) -> bool:
    """A folder, not a link to one (a submission's links are never followed)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _real_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _module_names(lab: Lab) -> set[str]:
    """The importable names the lab's service commands run (`python -m order_api` -> order_api)."""
    names = set()
    for spec in lab.services.values():
        argv = spec.command
        if "-m" in argv and argv.index("-m") + 1 < len(argv):
            names.add(argv[argv.index("-m") + 1].split(".")[0])
    return names or set(lab.services)


def holds_services(folder: Path, lab: Lab) -> bool:
    """A service package (a folder, or `name.py`) right in `folder`; a link to one does not count."""
    return any(_real_dir(folder / name) or _real_file(folder / f"{name}.py") for name in _module_names(lab))


def service_root(folder: Path, lab: Lab, depth: int = 3) -> Path:
    """The shallowest folder under `folder` holding a service package; `folder` itself if none does
    (the run then reports that the services did not start - the learner's problem to see). Folders
    are entered only as themselves, never through a link."""
    level = [folder]
    for _ in range(depth + 1):
        for candidate in level:
            if holds_services(candidate, lab):
                return candidate
        level = [p for d in level for p in sorted(d.iterdir())
                 if _real_dir(p) and not p.name.startswith(".") and p.name not in SKIP_NAMES]
    return folder


def _strip_common_prefix(names: list[str]) -> list[str]:
    """Classroom clones are `<assignment>-<login>`: drop the shared `<assignment>-`."""
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    cut = prefix.rfind("-") + 1
    stripped = [n[cut:] for n in names]
    return stripped if cut and all(stripped) else names


def _unique(names: list[str]) -> list[str]:
    """Each name once, compared without case (`Bob` and `bob` are one folder where the file system
    ignores case): a repeat gets `-2`, `-3`, ... (never a name another student already has)."""
    taken = {n.casefold() for n in names}
    seen: set[str] = set()
    out = []
    for name in names:
        unique, k = name, 1
        while unique.casefold() in seen or (unique != name and unique.casefold() in taken):
            k += 1
            unique = f"{name}-{k}"
        seen.add(unique.casefold())
        out.append(unique)
    return out


def _gradescope(folder: Path) -> list[Submission] | None:
    meta = folder / GRADESCOPE_METADATA
    if not meta.exists():
        return None
    import yaml  # only Gradescope exports need it

    data = yaml.safe_load(meta.read_text()) or {}
    found = []
    for key, entry in sorted(data.items()):
        path = folder / str(key)
        if "/" in str(key) or str(key) in ("", ".", "..") or not (path.is_symlink() or path.exists()):
            continue
        entry = entry or {}
        people = entry.get(":submitters") or entry.get("submitters") or []
        labels = [str(p.get(":sid") or p.get(":email") or p.get(":name") or p.get("sid") or p.get("email")
                      or p.get("name")) for p in people if isinstance(p, dict)]
        names = [str(p.get(":name") or p.get("name") or "") for p in people if isinstance(p, dict)]
        student = "+".join(label.split("@")[0] for label in labels if label and label != "None") or str(key)
        found.append(Submission(safe_name(student), path, [n for n in names if n]))
    names = _unique([s.name for s in found])
    for sub, name in zip(found, names):
        sub.name = name
    return found


def _unpack(archive: Path, home: Path, digest: str, limits: Limits = Limits()) -> tuple[Path, list[str]]:
    """`archive` unpacked under `home/<digest>` - once per version: a resubmission (another digest) is
    unpacked afresh and the earlier version removed. Unpacking goes to a `.partial` folder renamed when
    complete, so a batch stopped halfway never grades half an archive."""
    target, notes_file = home / digest[:16], home / f"{digest[:16]}.notes.json"
    if target.is_dir():
        try:
            return target, json.loads(notes_file.read_text())
        except (OSError, ValueError):
            return target, []
    shutil.rmtree(home, ignore_errors=True)
    partial = home / f"{digest[:16]}.partial"
    notes = extract(archive, partial, limits)
    notes_file.write_text(json.dumps(notes))
    partial.rename(target)
    return target, notes


def discover(root: Path, lab: Lab, work: Path) -> list[Submission]:
    """The class in `root`. An archive given as `root` is unpacked under `work` first."""
    root = root.resolve()
    if is_archive(root):
        root, _ = _unpack(root, work / "class", _digest_file(root), CLASS_LIMITS)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder or an archive")
    if holds_services(root, lab):
        return [Submission(safe_name(root.name), root)]
    entries = _entries(root)
    while len(entries) == 1 and _real_dir(entries[0]) and not holds_services(entries[0], lab) \
            and not (entries[0] / ".git").exists() and _entries(entries[0]):
        root, entries = entries[0], _entries(entries[0])  # an export's wrapper folder
    gradescope = _gradescope(root)
    if gradescope is not None:
        return gradescope
    if not entries:  # loose files and no services: one submission, graded so its report says what is missing
        return [Submission(safe_name(root.name), root)]
    names = _unique([safe_name(n) for n in _strip_common_prefix([safe_name(stem(p)) for p in entries])])
    return [Submission(name, path) for name, path in zip(names, entries)]


def materialize(sub: Submission, lab: Lab, work: Path, digest: str | None = None) -> Path:
    """The folder to grade: an archive is unpacked under `work/<name>/` (once per version, `digest` its
    fingerprint); then its service root. A submission that is a link is refused (`Refused`)."""
    if sub.kind == "link":
        raise Refused(f"the submission {sub.source.name} is a link (-> {os.readlink(sub.source)!r}), and links "
                      f"are never followed: put the folder or archive itself in the class folder")
    if sub.kind == "archive":
        target, sub.notes = _unpack(sub.source, work / sub.name, digest or fingerprint(sub))
        return service_root(target, lab)
    return service_root(sub.source, lab)


def _hash_into(digest, path: Path) -> None:
    """Add a regular file's bytes (opened without following a link) to `digest`."""
    with os.fdopen(open_regular(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)


def _digest_file(path: Path) -> str:
    digest = hashlib.sha256()
    _hash_into(digest, path)
    return digest.hexdigest()


def fingerprint(sub: Submission) -> str:
    """Identifies what was submitted: a changed submission is graded again on a resumed run. A folder's
    files are hashed with their paths, its links by their text (never followed)."""
    if sub.kind == "link":
        return hashlib.sha256(b"link\0" + os.fsencode(os.readlink(sub.source))).hexdigest()
    if sub.kind == "archive":
        return _digest_file(sub.source)
    digest = hashlib.sha256()
    found = Walked()
    for rel, kind, path in walk(sub.source, found=found):
        if kind == "link":
            digest.update(f"link {rel} -> ".encode() + os.fsencode(os.readlink(path)) + b"\0")
        elif kind == "file":
            digest.update(f"file {rel}\0".encode())
            try:
                _hash_into(digest, path)
            except OSError as e:
                digest.update(f"unreadable: {e}".encode())
    for note in found.dropped + found.skipped:
        digest.update(note.encode() + b"\0")
    return digest.hexdigest()


def content_digest(folder: Path) -> str:
    """The files of a folder (names and bytes; links and caches left out, never followed): equal for
    identical code, so that identical submissions can be flagged."""
    digest = hashlib.sha256()
    for rel, kind, path in walk(folder):
        if kind == "file":
            digest.update(f"{rel}\0".encode())
            try:
                _hash_into(digest, path)
            except OSError:
                pass
    return digest.hexdigest()


def _small_file(path: Path, limit: int = 1 << 20) -> str | None:
    """The text of a regular file (not a link) of at most `limit` bytes, else None."""
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return data.decode(errors="replace") if len(data) <= limit else None


def git_commit(sub: Submission) -> str | None:
    """The clone's HEAD commit, read from its .git folder's files: git itself is never run in a
    submission (its config can run commands - core.fsmonitor - and `.git` can be a file or link
    pointing elsewhere); links are not followed."""
    git = sub.source / ".git"
    if sub.kind != "git" or not _real_dir(git):
        return None
    head = (_small_file(git / "HEAD", 4096) or "").strip()
    if head.startswith("ref: "):
        ref = head[5:].strip()
        if not re.fullmatch(r"refs/[A-Za-z0-9._/+-]+", ref) or ".." in ref.split("/"):
            return None
        parts = ref.split("/")
        folders_real = all(_real_dir(git.joinpath(*parts[:i])) for i in range(1, len(parts)))
        loose = _small_file(git.joinpath(*parts), 4096) if folders_real else None
        if loose is not None:
            head = loose.strip()
        else:
            packed = _small_file(git / "packed-refs") or ""
            head = next((line.split(" ", 1)[0] for line in packed.splitlines()
                         if line.endswith(" " + ref) and not line.startswith(("#", "^"))), "")
    return head if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head) else None
