"""Checkpoint places and their gs:// mirror, and the gs:// helpers, against a real local GCS
emulator."""

import pytest

from lib.storage import (
    COMPLETE,
    CheckpointPlace,
    GCSMirror,
    checkpoint_place,
    fetch_prefix,
    list_prefix,
    upload_file,
)


def make_checkpoint(folder, step, content):
    path = folder / f"step_{step:08d}"
    (path / "sub").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(content)
    (path / "sub" / "rng.pkl").write_bytes(content[::-1])
    return path


def test_local_place_finds_the_newest_checkpoint(tmp_path):
    place = CheckpointPlace(tmp_path / "run")
    assert place.latest() is None
    for step in (4, 8, 12):
        make_checkpoint(place.folder, step, b"x")
    (place.folder / ".partial-step_00000016").mkdir()  # a save that never finished
    assert place.latest().name == "step_00000012"


def test_mirror_pushes_prunes_and_pulls_the_newest(gcs, tmp_path):
    mirror = GCSMirror("gs://facet/prefix/_checkpoints/TrainFlow/1")
    for step in (4, 8, 12):
        mirror.push(make_checkpoint(tmp_path / "here", step, f"weights {step}".encode()), keep=2)
    assert mirror._complete_steps() == ["step_00000008", "step_00000012"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pulled = mirror.pull_latest(elsewhere)
    assert pulled == elsewhere / "step_00000012"
    assert (pulled / "model.safetensors").read_bytes() == b"weights 12"
    assert (pulled / "sub" / "rng.pkl").read_bytes() == b"21 sthgiew"
    assert not (pulled / COMPLETE).exists()


def test_mirror_ignores_an_upload_that_never_completed(gcs, tmp_path):
    mirror = GCSMirror("gs://facet/runs/2")
    mirror.push(make_checkpoint(tmp_path, 4, b"good"), keep=3)
    mirror.bucket.blob("runs/2/step_00000008/model.safetensors").upload_from_string(b"half")
    assert mirror.pull_latest(tmp_path / "fresh").name == "step_00000004"


def test_a_gs_datastore_mirrors_checkpoints_under_its_root(gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("METAFLOW_DEFAULT_DATASTORE", "gs")
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_GS", "gs://facet/metaflow")
    place = checkpoint_place("TrainFlow", "7")
    assert place.mirror.uri == "gs://facet/metaflow/_checkpoints/TrainFlow/7"
    place.mirror.push(make_checkpoint(tmp_path / "pod-a", 5, b"w"), keep=2)
    assert place.latest().name == "step_00000005"  # pulled: this machine had none
    assert (place.folder / "step_00000005" / "model.safetensors").read_bytes() == b"w"

    monkeypatch.delenv("METAFLOW_DATASTORE_SYSROOT_GS")
    with pytest.raises(ValueError, match="METAFLOW_DATASTORE_SYSROOT_GS"):
        checkpoint_place("TrainFlow", "7")
    with pytest.raises(ValueError, match="gs:// URI"):
        GCSMirror("s3://bucket/x")


def test_upload_list_and_fetch_named_objects(gcs, tmp_path):
    for name in ("a.npy", "b.npy", "c.json"):
        (tmp_path / name).write_bytes(name.encode() * 3)
        upload_file(tmp_path / name, f"gs://facet/cache/key/{name}")
    assert list_prefix("gs://facet/cache/key") == {"a.npy": 15, "b.npy": 15, "c.json": 18}
    assert list_prefix("gs://facet/cache/other") == {}

    fetch_prefix("gs://facet/cache/key", tmp_path / "here", names=["b.npy", "c.json"])
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["b.npy", "c.json"]
    assert (tmp_path / "here" / "b.npy").read_bytes() == b"b.npyb.npyb.npy"
    with pytest.raises(FileNotFoundError, match=r"not found under gs://facet/cache/key: \['d'\]"):
        fetch_prefix("gs://facet/cache/key", tmp_path / "there", names=["a.npy", "d"])
