"""`labkit mutate`: the mutants made from each lab's reference (no graded run here; `make test-grader`
grades a sample)."""
from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grader.cli import app
from grader.lab import all_labs, find_lab
from grader.mutate import OPERATORS, SERVICES, Mutant, all_mutants, mutations, sample, source_files, write_submission


@pytest.mark.parametrize("lab", all_labs(), ids=lambda lab: lab.id)
def test_every_lab_gets_mutants_of_its_services_and_the_code_they_import(lab):
    files = {str(p.relative_to(SERVICES)) for p in source_files(lab)}
    started = {spec.command[-1] for spec in lab.services.values()}
    assert all(any(f.startswith(f"{name}/") for f in files) for name in started), (started, files)
    assert any(f.startswith("common/") for f in files)
    mutants = all_mutants(lab)
    assert {"delete-statement", "remove-call", "swap-statements", "drop-with", "flip-bool",
            "replace-constant"} <= {m.operator for m in mutants}
    assert len({m.id for m in mutants}) == len(mutants)


def test_operators_change_one_thing_and_keep_the_rest_byte_for_byte(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        'import threading\n'
        'LIMIT = 5\n\n\n'
        'def work(conn, lock):\n'
        '    """Docstrings are not statements to delete."""\n'
        '    with lock:  # why\n'
        '        conn.execute("UPDATE t SET n = n + 1")\n'
        '        conn.commit()\n'
        '    conn.send(flush=True)\n'
        '    return 0\n\n\n'
        'async def later(queue):\n'
        '    await queue.join()\n')
    found = {(op, line): (start, end, new) for op, line, start, end, new in mutations(source)}
    data = source.read_bytes()

    def apply(op: str, line: int) -> str:
        start, end, new = found[(op, line)]
        return Mutant("m", op, Path("mod.py"), line, start, end, new).apply(data).decode()

    assert 'pass\n        conn.commit()' in apply("remove-call", 8)
    assert '        pass\n    conn.send' in apply("remove-call", 9)
    assert apply("delete-statement", 11).endswith('    conn.send(flush=True)\n    pass\n\n\nasync def later(queue):\n'
                                                  '    await queue.join()\n')
    assert 'conn.commit()\n        conn.execute(' in apply("swap-statements", 8)
    assert apply("drop-with", 7).count("with lock") == 0 and '\n    conn.execute("UPDATE' in apply("drop-with", 7)
    assert "conn.send(flush=False)" in apply("flip-bool", 10)
    assert "LIMIT = 0" in apply("replace-constant", 2) and "return 1" in apply("replace-constant", 11)
    assert "    queue.join()" in apply("remove-await", 15)
    assert not any(line == 6 for _, line in found), "the docstring is left alone"
    assert {op for op, _ in found} == set(OPERATORS)
    for (op, line) in found:
        compile(apply(op, line), "mod.py", "exec")


def test_a_mutant_is_the_reference_with_one_file_changed(tmp_path):
    lab = find_lab("lab-1")
    mutants = all_mutants(lab)
    shared = next(m for m in mutants if m.path.parts[0] == "common")
    own = next(m for m in mutants if m.path.parts[0] == "read_model")
    for mutant, changed in ((shared, tmp_path / "a" / "services" / shared.path), (own, tmp_path / "b" / own.path)):
        folder = write_submission(lab, mutant, tmp_path / changed.relative_to(tmp_path).parts[0])
        assert (folder / "order_api" / "__main__.py").exists() and (folder / "services" / "common").is_dir()
        different = [p for p in folder.rglob("*.py")
                     if not filecmp.cmp(p, SERVICES / (p.relative_to(folder / "services") if p.is_relative_to(
                         folder / "services") else p.relative_to(folder)), shallow=False)]
        assert different == [changed]


def test_the_sample_depends_only_on_the_seed():
    mutants = all_mutants(find_lab("lab-1"))
    assert sample(mutants, 6, 3) == sample(mutants, 6, 3) != sample(mutants, 6, 4)
    assert len(sample(mutants, 6, 3)) == 6 and sample(mutants, 0, 3) == mutants


def test_mutate_lists_and_refuses_to_overwrite_another_folder(tmp_path):
    listed = CliRunner().invoke(app, ["mutate", "lab-1", "--list"])
    assert listed.exit_code == 0 and "services/read_model/consumer.py" in listed.output
    (tmp_path / "precious.txt").write_text("x")
    refused = CliRunner().invoke(app, ["mutate", "lab-1", "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "give another --out" in refused.output
    assert (tmp_path / "precious.txt").exists()
