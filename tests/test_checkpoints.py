"""Checkpoints restore without unpickling anything, skip a damaged newest one for the one
before, and are on disk before they are named step_*."""

import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

import lib.storage
from lib.storage import (
    SEAL,
    CheckpointPlace,
    DamagedCheckpoint,
    GCSMirror,
    UnsafeCheckpoint,
    seal,
)
from lib.train import Progress, restore


class Training:
    """A linear model one AdamW step in, with its Progress: enough for a full checkpoint."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.accelerator = Accelerator(cpu=True)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.progress = Progress(augment_seed=seed)

    def step(self, n: int) -> None:
        self.model(torch.randn(4, 3)).sum().backward()
        self.optimizer.step()
        self.progress.step = n
        self.progress.history.append({"step": n, "loss": 1 / 3})
        torch.rand(5, generator=self.progress.augment_rng)

    def restore(self, place: CheckpointPlace) -> int:
        return restore(self.accelerator, self.progress, [place])


def saved(tmp_path: Path, steps=(4,)) -> tuple[Training, CheckpointPlace]:
    training, place = Training(seed=0), CheckpointPlace(tmp_path / "run")
    for step in steps:
        training.step(step)
        place.save(training.accelerator, step, keep=5, extra=training.progress)
    return training, place


def test_a_checkpoint_round_trips_through_files_that_need_no_pickle(tmp_path):
    before, place = saved(tmp_path, steps=(4,))
    checkpoint = place.folder / "step_00000004"
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # accelerate would unpickle it
    assert (checkpoint / Progress.FILE).exists() and (checkpoint / SEAL).exists()

    after = Training(seed=1)
    assert after.restore(place) == 4
    assert after.progress.history == before.progress.history == [{"step": 4, "loss": 1 / 3}]
    assert torch.equal(
        after.progress.augment_rng.get_state(), before.progress.augment_rng.get_state()
    )
    for name, weight in before.model.state_dict().items():
        assert torch.equal(after.model.state_dict()[name], weight), name
    assert after.optimizer.state_dict()["state"].keys() == {0, 1}


class Payload:
    """Unpickled, it creates the file `sentinel`."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return exec, (f"open({str(self.sentinel)!r}, 'w').close()",)


@pytest.mark.parametrize(
    "target", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"]
)
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, target):
    """Whoever can write the bucket rewrites a file restore reads (or that accelerate would
    read for a registered object), and the seal beside it."""
    _, place = saved(tmp_path)
    checkpoint, sentinel = place.folder / "step_00000004", tmp_path / "pwned"
    torch.save({"state": Payload(sentinel)}, checkpoint / target)
    seal(checkpoint)

    with pytest.raises(UnsafeCheckpoint, match=rf"{target} would run code.*builtins\.exec"):
        Training(seed=1).restore(place)
    assert not sentinel.exists()


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    before, place = saved(tmp_path, steps=(4, 8))
    newest = place.folder / "step_00000008"
    optimizer = newest / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])

    after = Training(seed=1)
    assert after.restore(place) == 4
    assert after.progress.history == before.progress.history[:1]
    said = capsys.readouterr().out
    assert f"damaged checkpoint {newest} (optimizer.bin is not the file that was saved" in said
    assert f"resuming from {place.folder / 'step_00000004'} instead" in said


def test_only_damaged_checkpoints_stop_the_restore(tmp_path):
    _, place = saved(tmp_path, steps=(4,))
    (place.folder / "step_00000004" / SEAL).write_text("{")
    with pytest.raises(DamagedCheckpoint, match=r"no intact checkpoint.*step_00000004.*manifest"):
        Training(seed=1).restore(place)


def test_every_file_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, rename = os.fsync, Path.rename

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def recording_rename(self, target):
        events.append(("rename", str(self)))
        return rename(self, target)

    monkeypatch.setattr(lib.storage.os, "fsync", recording_fsync)
    monkeypatch.setattr(Path, "rename", recording_rename)
    _, place = saved(tmp_path)

    checkpoint = place.folder / "step_00000004"
    partial = place.folder / ".partial-step_00000004"
    renamed = events.index(("rename", str(partial)))
    flushed = {path for kind, path in events[:renamed] if kind == "fsync"}
    files = {str(partial / p.relative_to(checkpoint)) for p in checkpoint.rglob("*")}
    assert files and files <= flushed
    assert str(partial) in flushed and ("fsync", str(place.folder)) in events[renamed:]


@pytest.mark.emulator
def test_a_damaged_mirrored_checkpoint_falls_back_to_the_one_before(gcs, tmp_path, capsys):
    """A fresh machine: the newest mirrored checkpoint is damaged in the bucket, so the one
    before is downloaded too, and resumed from."""
    mirror = GCSMirror("gs://facet/runs/1")
    training, place = Training(seed=0), CheckpointPlace(tmp_path / "pod-a", mirror)
    for step in (4, 8):
        training.step(step)
        place.save(training.accelerator, step, keep=5, extra=training.progress)
    mirror._blob("step_00000008/model.safetensors").upload_from_string(b"half")

    fresh = CheckpointPlace(tmp_path / "pod-b", mirror)
    assert Training(seed=1).restore(fresh) == 4
    assert "damaged checkpoint" in capsys.readouterr().out
    assert sorted(p.name for p in fresh.folder.iterdir()) == ["step_00000004", "step_00000008"]
