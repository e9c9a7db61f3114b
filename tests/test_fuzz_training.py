"""Fuzzing training's files: a process killed in the middle of writing a checkpoint, and
a disk that fills up, lose nothing already saved, and ``--resume`` then continues bit for
bit.

docs/errors.md lists each probe (the ``PROBES`` ids below) and what it gets.
"""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tiny_model import TINY_WIDTHS

from tinymaskrcnn import atomic_file, weights
from tinymaskrcnn.cli import main
from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.run_folder import CHECKPOINT, LOG, read_log
from tinymaskrcnn.train import train
from tinymaskrcnn.train_state import TrainSettings, load_training_state

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# The tiny model of tests/tiny_model.py at 64 x 64, anchors scaled to its images.
CONFIG = dict(
    **TINY_WIDTHS,
    min_size=64,
    max_size=64,
    anchor_sizes=((4,), (8,), (16,), (32,), (64,)),
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=30,
    rpn_batch_size_per_image=64,
    box_batch_size_per_image=32,
)
SETTINGS = dict(steps=4, batch_size=2, lr=0.01, warmup_iters=2, milestones=(3,), seed=3)


def _train(out, resume=False, **settings):
    return train(
        MaskRCNNConfig.shapes(**CONFIG),
        out,
        TrainSettings(**{**SETTINGS, "checkpoint_every": 1, **settings}),
        resume=resume,
        dataset=ShapesDataset(6, image_size=64, seed=5),
        eval_dataset=False,
        backend="numpy",
        progress=False,
    )


def _temporary_files(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith(".tmp-"))


# --- SIGKILL in the middle of a checkpoint write ---------------------------------------------

# The child trains with a checkpoint every step. Its third checkpoint write is made slow
# from outside the library: the script wraps weights.write_atomically so that the bytes
# go to the temporary file in two halves with a pause between them, and says so on
# stdout; the parent then kills it with SIGKILL, deterministically mid-write.
CHILD = textwrap.dedent(
    """
    import io, sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    import test_fuzz_training as case
    from tinymaskrcnn import weights

    real, calls = weights.write_atomically, []

    def slow_third_write(path, write):
        calls.append(path)
        if len(calls) < 3:
            return real(path, write)

        def in_two_halves(f):
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            print("MID-WRITE", len(data), flush=True)
            time.sleep(300)
            f.write(data[len(data) // 2 :])

        return real(path, in_two_halves)

    weights.write_atomically = slow_third_write
    case._train(sys.argv[1])
    print("FINISHED", flush=True)
    """
)


def test_sigkill_mid_checkpoint_write_keeps_the_last_checkpoint_and_resume_is_exact(tmp_path):
    run = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=ROOT, tests=TESTS))
    child = subprocess.Popen(
        [sys.executable, str(script), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("MID-WRITE"), line + child.stderr.read()
        size = int(line.split()[1])
        (temporary,) = _temporary_files(run)
        assert os.path.getsize(run / temporary) == size // 2  # killed with half written
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()

    # The checkpoint of step 2 is whole under the real name; the half file is a stray
    # temporary file beside it, never the checkpoint.
    _, _, step, _ = load_training_state(run / CHECKPOINT)
    assert step == 2

    resumed = _train(run, resume=True)
    straight = _train(tmp_path / "straight")
    assert resumed.step == 4
    for name, value in resumed.model.state_dict().items():
        np.testing.assert_array_equal(value, straight.model.state_dict()[name], err_msg=name)
    np.testing.assert_array_equal(read_log(run / LOG)["step"], [1, 2, 3, 4])
    np.testing.assert_array_equal(
        read_log(run / LOG)["loss"], read_log(tmp_path / "straight" / LOG)["loss"]
    )


def test_write_atomically_renames_only_after_the_whole_file_is_synced(tmp_path, monkeypatch):
    # The order that makes the kill above safe: write, flush, fsync, then rename.
    events = []
    monkeypatch.setattr(atomic_file.os, "fsync", lambda fd: events.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(
        atomic_file.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))
    )
    atomic_file.write_atomically(tmp_path / "f", lambda f: events.append("write"))
    assert events == ["write", "fsync", "replace"]


# --- a full disk ---------------------------------------------------------------------------------


def test_a_disk_full_during_a_checkpoint_loses_nothing_saved(tmp_path, monkeypatch):
    # Mocked: the next checkpoint's write stops half way with ENOSPC, as write(2) does
    # on a full disk.
    run = tmp_path / "run"
    _train(run, steps=1)
    saved = (run / CHECKPOINT).read_bytes()
    real = weights.write_atomically

    def full_disk(path, write):
        def half_then_full(f):
            buffer = io.BytesIO()
            write(buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

        return real(path, half_then_full)

    monkeypatch.setattr(weights, "write_atomically", full_disk)
    with pytest.raises(OSError, match="No space left on device") as caught:
        _train(run, resume=True, steps=3)
    assert caught.value.errno == errno.ENOSPC
    assert (run / CHECKPOINT).read_bytes() == saved and _temporary_files(run) == []
    monkeypatch.undo()
    assert load_training_state(run / CHECKPOINT)[2] == 1


def _mount_tmpfs(folder, size):
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")


def test_a_real_full_disk_is_one_cli_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    # A tmpfs with room for one checkpoint and a half: the second checkpoint's temporary
    # file cannot fit beside the first.
    _train(tmp_path / "probe", steps=1)
    size = os.path.getsize(tmp_path / "probe" / CHECKPOINT)
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, (size * 3 // 2) // 4096 * 4096)
    try:
        argv = ["train", "--out", str(disk / "run"), "--backend", "numpy", "--no-progress"]
        argv += [a for k, v in CONFIG.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        argv += ["--steps", "3", "--checkpoint-every", "1", "--batch-size", "1"]
        argv += ["--train-images", "4", "--eval-images", "0", "--warmup-iters", "1"]
        with pytest.raises(SystemExit) as caught:
            main(argv)
        message = caught.value.code
        assert isinstance(message, str) and "\n" not in message
        assert message.startswith("tinymaskrcnn train: No space left on device"), message
        assert load_training_state(disk / "run" / CHECKPOINT)[2] == 1
        assert _temporary_files(disk / "run") == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


PROBES = [
    "sigkill-mid-checkpoint-write",
    "write-fsync-rename-order",
    "disk-full-mocked",
    "disk-full-tmpfs",
]
