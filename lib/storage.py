"""Where runs keep files that are not artifacts (training checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path


def checkpoint_dir(flow_name: str, run_id: str) -> Path:
    """Checkpoints of one run, beside Metaflow's local datastore (.metaflow under
    METAFLOW_DATASTORE_SYSROOT_LOCAL, or the working directory), so that a resumed run can
    find its origin's."""
    root = Path(os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL", os.getcwd()))
    return root / ".metaflow" / flow_name / "checkpoints" / run_id
