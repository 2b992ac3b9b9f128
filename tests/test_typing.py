"""Task and Flow are generic over the function's parameters and return type (checked by mypy)."""

import subprocess
import sys
import textwrap

import pytest

SNIPPET = textwrap.dedent('''
    from daskflow import flow, task

    @task
    def double(n: int) -> int:
        return 2 * n

    @flow
    def pipeline(n: int) -> str:
        return str(n)

    reveal_type(double.submit(1))
    reveal_type(double.map([1, 2]))
    reveal_type(double.submit(1).result())
    reveal_type(double(1))
    reveal_type(pipeline(3))
    pipeline(3)
    pipeline("x")  # line 18: rejected
    double.submit("x")  # line 19: rejected
''')


def test_mypy_checks_task_and_flow_calls(tmp_path):
    pytest.importorskip("mypy")
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary", "--cache-dir",
         str(tmp_path / ".mypy_cache"), str(path)], capture_output=True, text=True, timeout=300,
    ).stdout
    lines = [line.split(":", 2)[1:] for line in out.splitlines() if line.startswith(str(path))]
    found = {(int(n), msg.strip()) for n, msg in lines}
    notes = {n: m for n, m in found if m.startswith("note: Revealed type")}
    assert notes[12].endswith('TaskRunFuture[int]"') or notes[12].endswith('TaskRunFuture[builtins.int]"')
    assert "MapFutures[int]" in notes[13] or "MapFutures[builtins.int]" in notes[13]
    assert all(notes[n].endswith(('"int"', '"builtins.int"')) for n in (14, 15))
    assert notes[16].endswith(('"str"', '"builtins.str"'))
    errors = {n for n, m in found if m.startswith("error")}
    assert errors == {18, 19}, out
