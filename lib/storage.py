"""Where runs keep files that are not artifacts (training checkpoints)."""

from __future__ import annotations

from pathlib import Path

from metaflow.plugins.datastores.local_storage import LocalStorage


def checkpoint_dir(flow_name: str, run_id: str) -> Path:
    """Checkpoints of one run, inside Metaflow's local datastore root (the .metaflow folder
    that METAFLOW_DATASTORE_SYSROOT_LOCAL or the working tree selects), so that a resumed
    run finds its origin's."""
    root = LocalStorage.get_datastore_root_from_config(lambda *_, **__: None)
    return Path(root) / "_checkpoints" / flow_name / run_id
