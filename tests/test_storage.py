"""Folders here and on gs://, checkpoint places and their gs:// mirror, against a real local
GCS emulator."""

import re

import pytest
from helpers import use_gs_datastore
from metaflow import metaflow_config

from lib.storage import (
    COMPLETE,
    CheckpointPlace,
    GCSFolder,
    GCSMirror,
    LocalFolder,
    checkpoint_place,
    folder_at,
)


def make_checkpoint(folder, step, content):
    path = folder / f"step_{step:08d}"
    (path / "sub").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(content)
    (path / "sub" / "rng.pkl").write_bytes(content[::-1])
    return path


def test_local_place_offers_its_checkpoints_newest_first(tmp_path):
    place = CheckpointPlace(tmp_path / "run")
    assert list(place.candidates()) == []
    for step in (4, 8, 12):
        make_checkpoint(place.folder, step, b"x")
    (place.folder / ".partial-step_00000016").mkdir()  # a save that never finished
    assert [path.name for path in place.candidates()] == [f"step_{s:08d}" for s in (12, 8, 4)]


@pytest.mark.emulator
def test_mirror_pushes_prunes_and_pulls_the_newest(gcs, tmp_path):
    mirror = GCSMirror("gs://facet/prefix/_checkpoints/TrainFlow/1")
    for step in (4, 8, 12):
        mirror.push(make_checkpoint(tmp_path / "here", step, f"weights {step}".encode()), keep=2)
    assert mirror.complete_steps() == ["step_00000008", "step_00000012"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pulled = mirror.pull("step_00000012", elsewhere)
    assert pulled == elsewhere / "step_00000012"
    assert (pulled / "model.safetensors").read_bytes() == b"weights 12"
    assert (pulled / "sub" / "rng.pkl").read_bytes() == b"21 sthgiew"
    assert not (pulled / COMPLETE).exists()


@pytest.mark.emulator
def test_mirror_ignores_an_upload_that_never_completed(gcs, tmp_path):
    mirror = GCSMirror("gs://facet/runs/2")
    mirror.push(make_checkpoint(tmp_path, 4, b"good"), keep=3)
    mirror._blob("step_00000008/model.safetensors").upload_from_string(b"half")
    assert mirror.complete_steps() == ["step_00000004"]


@pytest.mark.emulator
def test_a_gs_datastore_mirrors_checkpoints_under_its_root(gcs, tmp_path, monkeypatch):
    use_gs_datastore(monkeypatch, "gs://facet/metaflow")
    place = checkpoint_place("TrainFlow", "7")
    assert place.mirror.uri == "gs://facet/metaflow/_checkpoints/TrainFlow/7"
    place.mirror.push(make_checkpoint(tmp_path / "pod-a", 5, b"w"), keep=2)
    assert next(place.candidates()).name == "step_00000005"  # pulled: this machine had none
    assert (place.folder / "step_00000005" / "model.safetensors").read_bytes() == b"w"

    monkeypatch.setattr(metaflow_config, "DATASTORE_SYSROOT_GS", None)
    with pytest.raises(ValueError, match="METAFLOW_DATASTORE_SYSROOT_GS"):
        checkpoint_place("TrainFlow", "7")
    with pytest.raises(ValueError, match="gs:// URI"):
        GCSMirror("s3://bucket/x")


@pytest.mark.emulator
def test_a_gs_folder_publishes_lists_and_fetches_named_files(gcs, tmp_path):
    written = folder_at("gs://facet/cache/key/", copy=tmp_path / "written")
    assert isinstance(written, GCSFolder) and written.uri == "gs://facet/cache/key"
    (written.local / "sub").mkdir(parents=True)
    for name in ("a.npy", "b.npy", "sub/c.json"):
        (written.local / name).write_bytes(name.encode() * 3)
    written.publish(["a.npy", "b.npy", "sub/c.json"])
    assert written.names() == {"a.npy", "b.npy", "sub/c.json"}
    assert folder_at("gs://facet/cache/other", copy=tmp_path / "other").names() == set()

    here = GCSFolder("gs://facet/cache/key", tmp_path / "here")
    assert here.fetch(["b.npy", "sub/c.json"]) == tmp_path / "here"
    assert sorted(p.name for p in here.local.rglob("*")) == ["b.npy", "c.json", "sub"]
    assert (here.local / "b.npy").read_bytes() == b"b.npyb.npyb.npy"
    with pytest.raises(FileNotFoundError, match=r"not found under gs://facet/cache/key: \['d'\]"):
        GCSFolder("gs://facet/cache/key", tmp_path / "there").fetch(["a.npy", "d"])
    assert here.fetch(["a.npy", "d"], missing_ok=True) == here.local
    assert (here.local / "a.npy").exists() and not (here.local / "d").exists()


def test_a_local_folder_is_its_own_copy(tmp_path):
    folder = folder_at(tmp_path / "cache", copy=tmp_path / "unused")
    assert folder == LocalFolder(tmp_path / "cache") and folder.names() == set()
    folder.local.mkdir()
    (folder.local / "a.npy").write_bytes(b"a")
    folder.publish(["a.npy"])  # nothing to do: every reader sees it already
    assert folder.names() == {"a.npy"} and folder.uri == str((tmp_path / "cache").resolve())
    assert folder.fetch(["a.npy"]) == folder.local
    with pytest.raises(FileNotFoundError, match=r"b\.npy"):
        folder.fetch(["a.npy", "b.npy"])
    assert folder.fetch(["b.npy"], missing_ok=True) == folder.local
    assert not (tmp_path / "unused").exists()


def test_a_local_folder_refuses_names_that_leave_it(tmp_path):
    folder = LocalFolder(tmp_path / "cache")
    for name in ("../secret", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match=f"refusing the name {re.escape(repr(name))}"):
            folder.fetch([name], missing_ok=True)
