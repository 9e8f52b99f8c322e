"""Writing output files safely: checked before any work, written atomically.

Used by every tool that writes a file (bundles, file mode's outputs, plots): a temporary
file beside the target, renamed into place only when complete, so an interrupted write
leaves nothing behind and never damages an existing file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import OutputError


def check_output_path(path: str | Path, force: bool) -> Path:
    """Fail early (before any work) if ``path`` cannot be written.

    Raises:
        OutputError: the folder is missing or not writable, the path is a folder, or the
            file exists and ``force`` is False.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output path is a directory: {path}")
    if not parent.is_dir():
        raise OutputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    if path.exists() and not force:
        raise OutputError(f"{path} exists; use --force to overwrite it")
    return path


@contextmanager
def atomic_output(path: str | Path, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    An exception (or Ctrl-C) inside the block removes the temporary file, so no partial
    output is ever left and an existing file is never damaged.
    """
    path = check_output_path(path, force)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent} ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        if path.exists() and not force:
            raise OutputError(f"{path} appeared while working; use --force to overwrite it")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
