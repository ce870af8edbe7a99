"""Crash safety: a run killed with SIGKILL mid-epoch resumes (--resume) to the same final masks and
weights as an uninterrupted run; a truncated checkpoint is detected and the previous one is kept."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = ["train", "--epochs", "4", "--width", "0.5", "--time-steps", "2", "--no-progress", "--no-dense-baseline",
        "--fixed-mask-epochs", "1", "--seed", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sca_plugin", *args], env=ENV, capture_output=True, text=True,
                          timeout=600, **kw)


def checkpoint_epoch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return None


def same_run(a: Path, b: Path) -> None:
    sa = torch.load(a / "model_state.pth", weights_only=True)
    sb = torch.load(b / "model_state.pth", weights_only=True)
    assert sa["history"] == sb["history"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert torch.equal(sa["state"][k], sb["state"][k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("crash") / "a"
    res = cli(*ARGS, "--output-dir", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "sca_plugin", *ARGS, "--output-dir", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # kill as soon as the first epoch's checkpoint is on disk
            if checkpoint_epoch(out / "checkpoint.pt") == 1:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    assert checkpoint_epoch(out / "checkpoint.pt") in (1, 2)  # never a torn file
    res = cli(*ARGS, "--output-dir", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    same_run(uninterrupted, out)


def test_truncated_checkpoint_is_detected_and_the_previous_one_kept(uninterrupted, tmp_path):
    out = tmp_path / "c"
    res = cli(*ARGS, "--output-dir", str(out))
    assert res.returncode == 0
    (out / "metrics.json").unlink()  # as if the run had died after its last checkpoint
    assert checkpoint_epoch(out / "checkpoint.prev.pt") == 3 and checkpoint_epoch(out / "checkpoint.pt") == 4
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    prev = (out / "checkpoint.prev.pt").read_bytes()
    res = cli(*ARGS, "--output-dir", str(out), "--resume")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert "is unreadable or truncated" in err and "checkpoint.prev.pt (after epoch 3) is intact" in err
    assert (out / "checkpoint.prev.pt").read_bytes() == prev  # the good one is untouched
    os.replace(out / "checkpoint.prev.pt", out / "checkpoint.pt")
    res = cli(*ARGS, "--output-dir", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    same_run(uninterrupted, out)
