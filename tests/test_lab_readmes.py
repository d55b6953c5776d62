"""The lab READMEs teach with recipes and hints point into them: both must hold.

Recipes are the fenced blocks whose info string starts with `sql` or `sh`:
- ```` ```sql ```` runs against a native PostgreSQL in a fresh run database with the lab's schema as its
  services create it, as the run's own role (the rights a learner's services have). `<LAB_NAMESPACE>`
  stands for the run's namespace. Statements end with `;` at the end of a line and run one by one in
  autocommit, as psql runs them.
- ```` ```sh ```` blocks start stacks and services (`make lab-N`): each command is checked without
  running it: a `make` target must exist (`make -n`), a `labkit` command must parse (`--help`), a file
  it names must exist (paths a run or `make install` creates, `results/`, `.venv/`, are not checked).
- A block whose info string carries `no-run` (```` ```sql no-run ````: a schema written as a picture) is
  neither run nor checked.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = sorted((REPO / "labs").glob("lab-*/README.md"))
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
HINT_TARGET = re.compile(r"README: '(.+?)'(?:\.|$)")


def headings(readme: Path) -> list[str]:
    """Section titles a reader can find: Markdown headings, and bold lead-ins (`**Offsets after the
    commit.**` opening a paragraph or a list item), without their trailing punctuation."""
    titles = []
    for line in readme.read_text().splitlines():
        if line.startswith("#"):
            titles.append(line.lstrip("#").strip())
        elif m := re.match(r"^\s*(?:[-*]\s+|\d+\.\s+)?\*\*([^*]+)\*\*", line):
            titles.append(m.group(1).strip().rstrip(".:"))
    return titles


def names_a_heading(target: str, titles: list[str]) -> bool:
    """The title itself, or its beginning up to a word boundary ('Stampedes' names 'Stampedes (dog-piling)')."""
    return any(t == target or (t.startswith(target) and not t[len(target)].isalnum()) for t in titles)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_every_hint_names_a_heading_of_its_readme(readme):
    lab = tomllib.loads((readme.parent / "lab.toml").read_text())
    titles = headings(readme)
    targets = [(c["id"], t) for c in lab["checks"] for t in HINT_TARGET.findall(c.get("hint", ""))]
    assert targets, "hints should point into the README"
    missing = [(check, t) for check, t in targets if not names_a_heading(t, titles)]
    assert not missing, f"hints name no heading of {readme.name}: {missing}"


def blocks(readme: Path, language: str) -> list[tuple[str, bool]]:
    """(code, runnable) of each block in `language`."""
    return [(code, "no-run" not in rest.split()) for lang, rest, code in FENCE.findall(readme.read_text())
            if lang == language]


def statements(sql: str) -> list[str]:
    out, current = [], []
    for line in sql.splitlines():
        current.append(line)
        if line.split("--", 1)[0].rstrip().endswith(";"):
            out.append("\n".join(current).strip())
            current = []
    assert not "\n".join(current).strip(), f"a statement does not end with ';': {current}"
    return out


def test_the_rule_finds_the_recipes():
    lab2 = REPO / "labs/lab-2-outbox-cdc/README.md"
    runnable = [code for code, run in blocks(lab2, "sql") if run]
    assert runnable and "'messages', 'true'" in runnable[0]
    assert all(code for r in READMES for code, _ in blocks(r, "sh")), "every lab says how to run it"


def _lab1(conn) -> None:
    from services.common.orders.projection import create_schema

    create_schema(conn)


def _lab2(conn) -> None:
    from services.common.outbox.schema import create_schema, ensure_replication

    create_schema(conn)
    ensure_replication(conn)


def _lab3(conn) -> None:
    from services.common.cache import create_schema

    create_schema(conn)


SCHEMAS = {"lab-1": _lab1, "lab-2": _lab2, "lab-3": _lab3, "lab-4": lambda conn: None}


@pytest.fixture
def run_db(native_stack, monkeypatch):
    """A fresh run database (its own role) with a lab's schema; yields (url, namespace)."""
    made = []

    def make(lab: str):
        ns = native_stack.namespace(prefix=lab.replace("-", ""))
        made.append(ns)
        monkeypatch.setenv("LAB_NAMESPACE", ns.name)  # the services name their slot after it
        url = ns.service_url("postgres")
        with psycopg.connect(url, autocommit=True) as conn:
            SCHEMAS[lab](conn)
        return url, ns.name

    yield make
    for ns in made:
        ns.drop()


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_sql_recipes_run_against_the_lab_schema(readme, run_db):
    recipes = [code for code, run in blocks(readme, "sql") if run]
    if not recipes:
        pytest.skip(f"{readme.parent.name}'s README has no runnable SQL")
    url, ns = run_db(tomllib.loads((readme.parent / "lab.toml").read_text())["id"])
    with psycopg.connect(url, autocommit=True) as conn:
        for recipe in recipes:
            for statement in statements(recipe.replace("<LAB_NAMESPACE>", ns)):
                try:
                    cursor = conn.execute(statement)
                    if cursor.description:
                        cursor.fetchall()
                except psycopg.Error as e:
                    pytest.fail(f"{readme.parent.name}: {statement!r} failed: {e}")


def test_lab2_heartbeat_recipe_moves_the_slot(run_db):
    """Item of the lab: on PostgreSQL 18 a heartbeat is only visible with 'messages' 'true', and the
    README's round then confirms past it; without the option the peek returns nothing at all."""
    url, ns = run_db("lab-2")
    recipe = next(code for code, run in blocks(REPO / "labs/lab-2-outbox-cdc/README.md", "sql") if run)
    heartbeat, peek, advance, _ = statements(recipe.replace("<LAB_NAMESPACE>", ns))
    slot = f"{ns}_outbox_relay"
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                              (slot,)).fetchone()[0]
        conn.execute(heartbeat)
        assert [m for *_, m in conn.execute(peek).fetchall()] == ["B", "M", "C"]
        without = peek.replace(", 'messages', 'true'", "")
        assert conn.execute(without).fetchall() == [], "pgoutput skips a transaction with only a message"
        conn.execute(advance)
        after, current = conn.execute("SELECT confirmed_flush_lsn, pg_current_wal_lsn() FROM pg_replication_slots "
                                      "WHERE slot_name = %s", (slot,)).fetchone()
        assert before < after <= current
        assert conn.execute(peek).fetchall() == [], "confirmed at the Commit's end: nothing handed out again"


def _labkit_command(words: list[str]) -> list[str]:
    """`labkit CMD --help`: the command exists (its arguments are the learner's)."""
    return [str(Path(sys.executable).parent / "labkit"), *[w for w in words[1:] if not w.startswith("-")][:1], "--help"]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_shell_recipes_name_what_exists(readme):
    for code, run in blocks(readme, "sh"):
        if not run:
            continue
        for line in code.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command:
                continue
            words = shlex.split(command)
            if words[0] == "make":
                done = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True)
                assert done.returncode == 0, f"{readme.parent.name}: `{command}`: {done.stderr}"
            elif Path(words[0]).name == "labkit":
                done = subprocess.run(_labkit_command(words), cwd=REPO, capture_output=True, text=True)
                assert done.returncode == 0, f"{readme.parent.name}: `{command}`: {done.stderr}"
            for word in words:
                made = ("~", "$", "path/", ".venv/", "results/")  # the learner's, `make install`'s or a run's
                if "/" in word and not word.startswith(made) and "=" not in word:
                    assert (REPO / word).exists() or (readme.parent / word).exists(), \
                        f"{readme.parent.name}: `{command}` names {word}, which does not exist"
