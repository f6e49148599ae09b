"""A CelebA folder in a gs:// bucket, against gcp-storage-emulator on 127.0.0.1."""

import dataclasses
import json

import numpy as np
import pytest
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from helpers import flaky

import lib.prepare
from lib import synthetic
from lib.cache import prepared_folder
from lib.celeba import image_location
from lib.datasets import CachedSplit, PreparedImages
from lib.prepare import finish, plan, prepare, prepare_shard
from lib.sources import resolve_source, shard_source
from lib.storage import GCSFolder, GCSMirror

pytestmark = pytest.mark.emulator

FAST_RETRY = DEFAULT_RETRY.with_delay(initial=0.01, maximum=0.1)


def upload(folder, uri):
    files = sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    GCSFolder(uri, folder).publish(map(str, files))


@pytest.fixture
def celeba_in_bucket(gcs, tmp_path):
    root = synthetic.generate(tmp_path / "local", synthetic.make_spec(24, seed=6))
    upload(root, "gs://facet/datasets/celeba")
    return root


def test_gs_source_prepares_exactly_like_the_local_folder(celeba_in_bucket, tmp_path, monkeypatch):
    local = prepare("local", celeba_in_bucket, image_size=16)
    monkeypatch.setenv("FACET_CACHE", str(tmp_path / "fresh-cache"))
    uri, mirror = resolve_source("gs://facet/datasets/celeba")
    remote = prepare(uri, mirror, image_size=16)
    assert remote["source"] == "gs://facet/datasets/celeba"
    assert remote["fingerprint"] == local["fingerprint"]
    for name in ("labels.npy", "split.npy"):
        assert np.array_equal(
            np.load(f"{local['cache_dir']}/{name}"), np.load(f"{remote['cache_dir']}/{name}")
        )
    assert np.array_equal(
        PreparedImages(local["cache_dir"])[:], PreparedImages(remote["cache_dir"])[:]
    )
    stamp = (mirror / "list_attr_celeba.txt").stat().st_mtime_ns
    assert resolve_source("gs://facet/datasets/celeba")[1] == mirror
    assert (mirror / "list_attr_celeba.txt").stat().st_mtime_ns == stamp  # not downloaded again


def test_transient_errors_are_retried(celeba_in_bucket, gcs, tmp_path, monkeypatch):
    with flaky(monkeypatch, failures=3) as proxy:
        source = GCSFolder("gs://facet/datasets/celeba", tmp_path / "mirror", FAST_RETRY, workers=4)
        source.fetch()
    assert proxy.failed == 3
    fetched = sorted(p.name for p in (tmp_path / "mirror" / "img_align_celeba").iterdir())
    assert fetched == [f"{i:06d}.jpg" for i in range(1, 25)]
    assert not list((tmp_path / "mirror").rglob("*.partial"))


def test_uploads_are_retried_like_downloads(gcs, tmp_path, monkeypatch):
    folder = tmp_path / "here"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.npy").write_bytes(b"a" * 10)
    (folder / "sub" / "b.json").write_bytes(b"{}")
    with flaky(monkeypatch, failures=3, failing="uploadType=") as proxy:
        GCSFolder("gs://facet/up", folder, FAST_RETRY).publish(["a.npy", "sub/b.json"])
    assert proxy.failed == 3
    assert GCSFolder("gs://facet/up", tmp_path / "there").names() == {"a.npy", "sub/b.json"}


def test_checkpoint_mirror_uploads_are_retried(gcs, tmp_path, monkeypatch):
    checkpoint = tmp_path / "step_00000004"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    with flaky(monkeypatch, failures=4, failing="uploadType=") as proxy:
        GCSMirror("gs://facet/runs/1", FAST_RETRY).push(checkpoint, keep=2)
    assert proxy.failed == 4
    assert GCSMirror("gs://facet/runs/1").complete_steps() == ["step_00000004"]


@pytest.mark.parametrize("stored, listed", [("data//abs", "/abs"), ("data/up-evil", "../evil")])
def test_an_object_named_out_of_its_folder_is_refused(gcs, tmp_path, monkeypatch, stored, listed):
    """A name with `..` reaches the listing through a proxy: the emulator stores none."""
    bucket = storage.Client().bucket("facet")
    for name in ("data/ok.txt", stored):
        bucket.blob(name).upload_from_string(b"x")
    rewrites = [(f'"{stored}"'.encode(), f'"data/{listed}"'.encode())]
    copy = tmp_path / "copy" / "data"
    with flaky(monkeypatch, failures=0, rewrites=rewrites), pytest.raises(ValueError) as refused:
        GCSFolder("gs://facet/data", copy, FAST_RETRY).fetch()
    assert f"refusing the name {listed!r}: it would leave {copy}" in str(refused.value)
    assert not any(path.is_file() for path in (tmp_path / "copy").rglob("*"))  # none fetched


def test_missing_label_object_fails_naming_the_uri(gcs, tmp_path):
    root = synthetic.generate(tmp_path / "local", synthetic.make_spec(6, seed=7))
    (root / "list_attr_celeba.txt").unlink()
    upload(root, "gs://facet/broken")
    uri, mirror = resolve_source("gs://facet/broken")
    with pytest.raises(FileNotFoundError, match=r"attribute file.*gs://facet/broken"):
        prepare(uri, mirror, image_size=16)


def test_nothing_under_the_prefix_or_no_bucket_is_a_clear_error(gcs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no objects under gs://facet/nothing"):
        GCSFolder("gs://facet/nothing", tmp_path / "x", FAST_RETRY).fetch()
    with pytest.raises(FileNotFoundError, match="bucket not found: gs://no-such-bucket"):
        GCSFolder("gs://no-such-bucket/x", tmp_path / "y", FAST_RETRY).fetch()


def on_machine(monkeypatch, home):
    """Another machine: its own home, so its own local cache, and the same gs:// cache."""
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FACET_CACHE", "gs://facet/cache")


def test_shards_prepared_on_separate_machines_meet_in_a_gs_cache(gcs, tmp_path, monkeypatch):
    """What the flow does with --with kubernetes: plan on one pod, a pod per shard, the join
    on another, and training on a last one that downloads only the shards it reads."""
    root = synthetic.generate(tmp_path / "celeba", synthetic.make_spec(30, seed=8))
    reference = prepare("x", root, image_size=16, shard_size=10)  # all here, local cache

    on_machine(monkeypatch, tmp_path / "planner")
    work = plan("x", root, image_size=16, shard_size=10)
    assert work.cache_dir == f"gs://facet/cache/prepared/{reference['cache_key']}"
    assert work.todo == [0, 1, 2] and not work.complete
    for shard in work.todo:
        on_machine(monkeypatch, tmp_path / f"shard-{shard}")
        prepare_shard(work, shard, root)
    on_machine(monkeypatch, tmp_path / "join")
    dataset = finish(work)
    assert dataset["cache_dir"] == work.cache_dir
    assert dataset["split_sizes"] == reference["split_sizes"]
    stored = prepared_folder(work.cache_dir).names()
    assert {"manifest.json", "labels.npy", "split.npy"} < set(stored)
    assert sum(name.endswith(".npy") and name.startswith("shard-") for name in stored) == 3

    on_machine(monkeypatch, tmp_path / "trainer")
    test = CachedSplit(dataset["cache_dir"], "test")
    key = reference["cache_key"]
    assert test.cache_dir == tmp_path / "trainer" / ".cache" / "facet" / "prepared" / key
    shards = sorted(p.name for p in test.cache_dir.glob("shard-*.npy"))
    assert shards == ["shard-0000020-0000030.npy"]  # the test split's rows, no others
    expected = PreparedImages(reference["cache_dir"])[test.rows]
    assert np.array_equal(np.stack([test[i][0].numpy() for i in range(len(test))]), expected)


def test_a_dataset_prepared_in_a_gs_cache_is_not_decoded_again(gcs, tmp_path, monkeypatch):
    root = synthetic.generate(tmp_path / "celeba", synthetic.make_spec(12, seed=9))
    on_machine(monkeypatch, tmp_path / "first")
    first = prepare("x", root, image_size=16, shard_size=5)
    on_machine(monkeypatch, tmp_path / "second")
    monkeypatch.setattr(lib.prepare, "_decode_one", lambda *args: pytest.fail("decoded again"))
    second = prepare("x", root, image_size=16, shard_size=5)
    assert second["cache_reused"] is True and second["cache_dir"] == first["cache_dir"]


@pytest.mark.parametrize("layout", ["official", "kaggle"])
def test_a_shard_task_elsewhere_fetches_only_its_own_images(gcs, tmp_path, monkeypatch, layout):
    """A pod per shard reads a gs:// source: it downloads its shard's images, not the
    dataset, and an image the bucket lacks is counted missing as in a local folder."""
    spec = synthetic.make_spec(30, seed=8)
    upload(synthetic.generate(tmp_path / "celeba", spec, layout=layout), "gs://facet/celeba")
    work = plan(*resolve_source("gs://facet/celeba"), image_size=16, shard_size=10)
    lost = work.files[12]
    storage.Client().bucket("facet").blob(f"celeba/{image_location(layout)}/{lost}").delete()

    on_machine(monkeypatch, tmp_path / "shard-pod")
    elsewhere = dataclasses.replace(work, root=tmp_path / "on-the-planning-pod-only")
    copy = shard_source(elsewhere, 1, "gs://facet/celeba")
    fetched = sorted(p.name for p in (copy / image_location(layout)).iterdir())
    assert fetched == sorted(set(work.files[10:20]) - {lost})
    prepare_shard(elsewhere, 1, copy)
    bad = json.loads(
        (prepared_folder(work.cache_dir).local / "shard-0000010-0000020.json").read_text()
    )
    assert bad == [[2, "missing"]]
