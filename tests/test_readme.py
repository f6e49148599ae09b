"""The README's shell commands, run as a newcomer would type them.

Every command in a ```bash block is either run here, in this module's own Metaflow datastore,
data cache and prediction log, or skipped by SKIP with its reason (shown by `pytest -ra`). A
command the README gains must be added to one of them, so the README cannot drift from what
works without anyone deciding so.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, use_home

pytestmark = pytest.mark.flow

README = ROOT / "README.md"

# Command prefix -> why this test does not run it. Leading VAR=value assignments are ignored
# when matching, and the longest prefix in SKIP or RUN decides.
SKIP = {
    "make run": "trains the 20,000-image default for minutes: CI's `make test` cannot re-run it "
    "in time (the smoke run below is the same flow on 400 images)",
    "make test": "runs the whole suite, this test included",
    "make test-fast": "runs the quick tier of the suite, which CI runs anyway",
    "make serve": "a long-running server: tests/test_gunicorn.py starts it under gunicorn",
    "curl": "needs the running server: tests/test_serving.py sends the same requests through "
    "Flask's test client",
    "python flows/train_flow.py run --data": "needs real CelebA on disk, or a bucket and a "
    "cloud account",
    "python flows/monitor_flow.py run": "needs a run tagged champion, which the smoke run need "
    "not be; the --model-run form of the same flow runs",
    "python flows/monitor_flow.py argo-workflows": "needs Kubernetes with Argo Workflows",
    "python flows/train_flow.py --config config flows/configs/celeba-vit-base.json "
    "argo-workflows": "needs Kubernetes with Argo Workflows; tests/test_deploy.py compiles it "
    "with --only-json on the GCS emulator",
    "make base-image": "debootstraps Debian for minutes; tests/test_image.py runs it where "
    "podman or docker works and the base is missing",
    "make image": "builds the image for minutes; tests/test_image.py builds it where podman "
    "or docker works",
    "podman run": "needs the image: tests/test_image.py runs it so, read-only with a model "
    "mounted read-only",
    "python flows/train_multinode_flow.py": "the README shows it on a Kubernetes cluster; "
    "tests/test_scale.py runs it locally",
    "gcloud": "needs a Google Cloud account",
    "kubectl": "needs a Kubernetes cluster",
    "export": "cloud settings for the commands after it (tests/test_deploy.py compiles the "
    "flows with the README's METAFLOW_KUBERNETES_* and METAFLOW_ARGO_* values)",
}

# Commands that are cheap and offline, run in the order the README gives them. `<run id>` is the
# id of the first TrainFlow run a command started.
RUN = (
    "python flows/train_flow.py --config config flows/configs/smoke.json run",
    "python flows/train_flow.py check",
    "python flows/train_flow.py resume --origin-run-id",
    "python -m lib.export",
    "python flows/monitor_flow.py run --model-run",
)


def shell_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, comments dropped."""
    blocks = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.M | re.S):
        lines = re.sub(r"\\\n\s*", " ", block).splitlines()
        commands = [re.sub(r"(^|\s+)#\s.*$", "", line).strip() for line in lines]
        blocks.append([command for command in commands if command])
    return blocks


def classify(command: str) -> str | None:
    """The longest RUN or SKIP prefix of `command` (without its VAR=value assignments)."""
    bare = re.sub(r"^(\w+=\S*\s+)+", "", command)
    prefixes = [p for p in (*RUN, *SKIP) if bare == p or bare.startswith(p + " ")]
    return max(prefixes, key=len, default=None)


BLOCKS = shell_blocks(README.read_text())
COMMANDS = [command for block in BLOCKS for command in block]
SKIPPED = [c for c in COMMANDS if classify(c) in SKIP]


def test_quick_start_is_make_run_then_make_test():
    assert BLOCKS[0] == ["make run", "make test"]


def test_every_command_is_run_or_skipped():
    unclassified = [c for c in COMMANDS if classify(c) is None]
    assert not unclassified, f"add these README commands to RUN or SKIP: {unclassified}"
    unused = [p for p in RUN if not any(classify(c) == p for c in COMMANDS)]
    assert not unused, f"RUN names commands the README no longer has: {unused}"


def test_generated_tables_have_their_markers():
    text = README.read_text()
    for table in ("config-table", "env-table"):
        begin, end = f"<!-- {table}:begin -->", f"<!-- {table}:end -->"
        assert text.count(begin) == 1 and text.count(end) == 1
        assert text.index(begin) < text.index(end)


def test_links_to_files_exist():
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


@pytest.mark.parametrize("command", SKIPPED)
def test_skipped_command(command):
    pytest.skip(f"{command!r}: {SKIP[classify(command)]}")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Where the commands run: this test's datastore folder (cards are written under the working
    directory), with `flows` linked in so that the README's relative paths work."""
    use_home(monkeypatch, tmp_path)
    monkeypatch.setenv("PREDICTION_LOG", str(tmp_path / "predictions.db"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    folder = Path(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"])
    (folder / "flows").symlink_to(ROOT / "flows")
    return folder


def test_runnable_commands(workdir):
    run_id = None
    for command in COMMANDS:
        if classify(command) not in RUN:
            continue
        if "<run id>" in command:
            assert run_id, f"{command!r} comes before any command that trains a run"
            command = command.replace("<run id>", run_id)
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=workdir,
            env=os.environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command!r} failed:\n{output[-3000:]}"
        started = re.search(r"Workflow starting \(run-id (\d+)\)", output)
        if run_id is None and started and "train_flow.py" in command:
            run_id = started.group(1)
    assert (workdir / "exported" / "config.json").exists()
