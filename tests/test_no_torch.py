"""nseg-data and nseg-infer must import without pulling in torch (see docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PACKAGES = ("nseg_data", "nseg_infer")

SCRIPT = r"""
import importlib, pkgutil, sys
names = []
for top in sys.argv[1:]:
    pkg = importlib.import_module(top)
    names.append(top)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=top + "."):
        importlib.import_module(info.name)
        names.append(info.name)
print(len(names))
print("TORCH" if "torch" in sys.modules else "CLEAN")
"""


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_without_torch(package):
    pytest.importorskip(package, reason=f"{package} is not installed in this environment")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, package], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    count, verdict = proc.stdout.split()[-2:]
    assert int(count) > 1, f"walked only {count} module(s) of {package}"
    assert verdict == "CLEAN", f"importing {package} imported torch"
