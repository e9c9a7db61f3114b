"""Atomic writes: the destination holds the old file or the whole new one, never a part."""

import os
import stat

import pytest

from tinymaskrcnn.atomic_file import write_atomically


def test_a_written_file_holds_everything_and_gets_the_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    assert write_atomically(path, lambda f: f.write(b"abc")) == str(path)
    assert path.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
