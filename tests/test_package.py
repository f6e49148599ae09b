"""Remote steps (--with kubernetes / batch) run from Metaflow's code package: lib/ must be in it."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

LIB = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lib").glob("*.py"))


@pytest.mark.parametrize("flow", sorted((ROOT / "flows").glob("*_flow.py")), ids=lambda p: p.stem)
def test_code_package_holds_every_lib_module(flow):
    listing = subprocess.run(
        [sys.executable, str(flow), "package", "list"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    packaged = {
        os.path.relpath(line, ROOT)
        for line in (listing.stdout + listing.stderr).splitlines()
        if line.startswith("/")
    }
    assert set(LIB) <= packaged, set(LIB) - packaged
    assert os.path.relpath(flow, ROOT) in packaged
