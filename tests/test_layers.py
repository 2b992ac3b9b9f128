"""The layers contract in pyproject.toml holds, and it would catch an upward import."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def lint(config: pathlib.Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_layers_contract_is_kept():
    out = lint(ROOT / "pyproject.toml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "daskflow layers KEPT" in out.stdout


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
