"""The layers contract in pyproject.toml holds, and it would catch an upward import."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def lint(config: pathlib.Path, root: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, "--config", str(config), "--no-cache"], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_layers_contract_is_kept():
    out = lint(ROOT / "pyproject.toml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "daskflow layers KEPT" in out.stdout
    assert "engine rooms KEPT" in out.stdout


def test_contract_counts_imports_inside_functions(tmp_path):
    # Without its named door, Task.delay's import inside a function breaks the contract.
    text = (ROOT / "pyproject.toml").read_text()
    door = 'ignore_imports = ["daskflow.engine.api.tasks -> daskflow.background.client"]'
    assert door in text
    config = tmp_path / "pyproject.toml"
    config.write_text(text.replace(door, ""))
    out = lint(config)
    assert out.returncode != 0
    assert "daskflow.engine.api.tasks -> daskflow.background.client" in out.stdout


def test_read_only_store_import_does_not_load_the_engine():
    code = ("import sys, daskflow.store.runs; "
            "print(sorted(m for m in sys.modules if m.startswith(('daskflow.engine', 'distributed'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_engine_rooms_contract_catches_an_upward_import_inside_a_function(tmp_path):
    # A copy of the package where the core room reaches up to the user-facing room, inside a
    # function (as a quick fix would): the rooms contract must break and name the import.
    shutil.copytree(ROOT / "daskflow", tmp_path / "daskflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    states = tmp_path / "daskflow" / "engine" / "core" / "states.py"
    states.write_text(states.read_text() + "\n\ndef planted():\n    from daskflow.engine.api.tasks import Task\n\n"
                      "    return Task\n")
    out = lint(tmp_path / "pyproject.toml", tmp_path)
    assert out.returncode != 0
    assert "engine rooms BROKEN" in out.stdout
    assert "daskflow.engine.core.states -> daskflow.engine.api.tasks" in out.stdout


def test_every_engine_room_says_what_it_owns():
    import daskflow.engine

    rooms = [p for p in (ROOT / "daskflow" / "engine").iterdir() if (p / "__init__.py").exists()]
    assert {p.name for p in rooms} == {"api", "client", "worker", "tracking", "core"}
    for room in rooms:
        doc = (room / "__init__.py").read_text()
        assert doc.startswith('"""') and len(doc) > 200, room
    assert all(name in daskflow.engine.__doc__ for name in ("api", "client", "worker", "tracking", "core"))


def test_no_engine_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "daskflow" / "engine").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long
