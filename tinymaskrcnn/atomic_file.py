"""Files written atomically: a reader (or a crash) never sees half a file.

Checkpoints, exported datasets and figures are all written the same way: into a
temporary file in the destination's folder, flushed to disk, then renamed over the
destination, which POSIX and Windows both do in one step.
"""

from __future__ import annotations

import os
import tempfile


def _default_mode() -> int:
    # mkstemp creates 0600 files; a file written here should get the permissions any
    # other new file would (0666 less the umask), e.g. 0644.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path, write) -> str:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file ``f``.

    The folder is created if needed. If ``write`` raises (a full disk included), ``path``
    is left as it was and the temporary file is removed. A ``path`` that is a folder, or
    lies under a file, is an IsADirectoryError / NotADirectoryError naming it. Returns
    ``path`` as a string.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder")
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # makedirs names whichever component failed; say which one is in the way.
        blocking = directory
        while not os.path.exists(blocking):
            blocking = os.path.dirname(blocking)
        raise NotADirectoryError(
            f"cannot write {path!r}: {blocking!r} is a file, not a folder"
        ) from None
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
