"""Remote steps (--with kubernetes / batch) run from Metaflow's code package: lib/ must be in it."""

import os

import pytest
from helpers import ROOT, run_python

from lib.config import load

pytestmark = pytest.mark.flow

LIB = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lib").glob("*.py"))


@pytest.mark.parametrize("flow", sorted((ROOT / "flows").glob("*_flow.py")), ids=lambda p: p.stem)
def test_code_package_holds_every_lib_module(flow):
    listing = run_python(flow, "package", "list")
    packaged = {
        os.path.relpath(line, ROOT)
        for line in (listing.stdout + listing.stderr).splitlines()
        if line.startswith("/")
    }
    assert set(LIB) <= packaged, set(LIB) - packaged
    assert os.path.relpath(flow, ROOT) in packaged


CONFIGS = sorted((ROOT / "flows" / "configs").glob("*.json"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_validates(config):
    """`check` builds the decorators from the config (resources, retries, timeout) and
    validates the graph; a config with several nodes goes with the multi-node flow."""
    several = load(config).train.num_nodes > 1
    flow = ROOT / "flows" / ("train_multinode_flow.py" if several else "train_flow.py")
    checked = run_python(flow, "--config", "config", config, "check")
    assert "The graph looks good!" in checked.stdout + checked.stderr
