"""TrainFlow on Metaflow's GCS datastore, against gcp-storage-emulator on 127.0.0.1.

Metaflow's default GCP client asks google.auth for credentials; the emulator wants anonymous
ones, so the flow runs with a tiny test-only Metaflow extension (tests/metaflow_ext) that
provides a plain google-cloud-storage client, anonymous when STORAGE_EMULATOR_HOST is set."""

import json
import os

import pytest
from google.cloud import storage
from helpers import FLOW, ROOT, run_python, use_gs_datastore
from metaflow import Runner

pytestmark = [pytest.mark.emulator, pytest.mark.flow]

EXTENSION = ROOT / "tests" / "metaflow_ext"
SYSROOT = "gs://facet/metaflow"


def test_a_run_on_the_gcs_datastore_stores_artifacts_and_checkpoints_there(
    gcs, smoke_config, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXTENSION), str(ROOT)]))
    use_gs_datastore(monkeypatch, SYSROOT)
    monkeypatch.setenv("METAFLOW_DEFAULT_GCP_CLIENT_PROVIDER", "facet-emulator")
    cwd = os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"]
    with Runner(
        str(FLOW), show_output=False, cwd=cwd, config_value=[("config", smoke_config)]
    ) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-3000:]
        run_id = result.run.id

    stored = [b.name for b in storage.Client().list_blobs("facet", prefix="metaflow/")]
    assert any(name.startswith(f"metaflow/TrainFlow/{run_id}/train/") for name in stored)
    checkpoints = f"metaflow/_checkpoints/TrainFlow/{run_id}/"
    assert any(n.startswith(checkpoints) and n.endswith("/COMPLETE") for n in stored)

    # A fresh process with the same settings reads the artifacts back through the client.
    read = run_python(
        "-c",
        "import json, sys; from metaflow import Run, namespace; namespace(None); "
        "data = Run(sys.argv[1]).data; "
        "print(json.dumps([data.metrics['mean_accuracy'], sorted(data.model)]))",
        f"TrainFlow/{run_id}",
        cwd=cwd,
    )
    accuracy, model_files = json.loads(read.stdout.strip().splitlines()[-1])
    assert 0 < accuracy <= 1
    assert "model.safetensors" in model_files
