import subprocess
import sys

import daskflow
import daskflow.background
import daskflow.runners
import daskflow.states


def test_all_names_exist():
    for module in (daskflow, daskflow.background, daskflow.runners, daskflow.states):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_all_is_sorted_and_complete():
    public = {n for n in dir(daskflow) if not n.startswith("_") and n[0].isalpha()}
    modules = {"engine", "config", "exceptions", "states", "runners", "cache", "cli", "annotations", "store",
               "background", "ids", "codes", "owners", "ui", "runtime", "leases"}
    assert set(daskflow.__all__) >= {"task", "flow", "unmapped", "allow_failure", "quote", "wait", "as_completed"}
    assert public - set(daskflow.__all__) <= modules
    assert daskflow.__all__ == sorted(daskflow.__all__) == sorted(daskflow._HOMES)


def test_import_does_not_import_distributed():
    code = "import sys, daskflow; print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
