"""Writing output files safely: checked before any work, written atomically.

Used by every tool that writes a file (bundles, file mode's outputs, plots): the output is
written aside and renamed into place only when complete, so an interrupted write, even a
``kill -9``, leaves nothing behind and never damages an existing file.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import OutputError

#: Write outputs as unnamed files first where the system allows (tests turn it off to
#: exercise the named fallback).
UNNAMED_FILES = True


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
    """Yield a path to write the output to; it appears at ``path`` only on success.

    On Linux the output is first an unnamed file in the target's folder (``O_TMPFILE``,
    written through its ``/proc/self/fd`` link, so writers must name their format
    explicitly rather than rely on the path's suffix): a process killed in the middle,
    even with ``kill -9``, leaves nothing at all. Elsewhere it is a hidden temporary file
    ``.NAME.<host>-<pid>.XXXX.part``, removed on an exception (or Ctrl-C), and removed by
    the next write of the same output once its process is gone. Either way an existing
    file is replaced only by a complete one, never damaged.
    """
    path = check_output_path(path, force)
    staged = _StagedFile(path)
    try:
        yield staged.write_path
        if path.exists() and not force:
            raise OutputError(f"{path} appeared while working; use --force to overwrite it")
        staged.commit()
    except OSError as exc:
        staged.discard()
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    except BaseException:
        staged.discard()
        raise


def _host_tag() -> str:
    """``<host>-<pid>``: who wrote a temporary file (the host's name made file-safe)."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"
    return f"{host}-{os.getpid()}"


class _StagedFile:
    """An output being written: an unnamed file where the system allows, else a named one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._tmp: Path | None = None
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # the usual permissions of a new file (mkstemp would give 0600)
        try:
            if UNNAMED_FILES and hasattr(os, "O_TMPFILE") and Path("/proc/self/fd").is_dir():
                try:
                    self._fd = os.open(path.parent, os.O_TMPFILE | os.O_RDWR, mode)
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                        raise
            remove_stale_parts(path)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host_tag()}.", suffix=".part")
            os.close(fd)
            self._tmp = Path(name)
            os.chmod(self._tmp, mode)
        except OSError as exc:
            raise OutputError(f"cannot write in {path.parent} ({exc.strerror or exc})") from None

    @property
    def write_path(self) -> Path:
        return Path(f"/proc/self/fd/{self._fd}") if self._fd is not None else self._tmp

    def commit(self) -> None:
        """Give the written file its name (replacing any file there, atomically)."""
        if self._fd is None:
            os.replace(self._tmp, self.path)
            return
        # link the unnamed file under a fresh hidden name, then rename that over the target
        named = self.path.with_name(f".{self.path.name}.{_host_tag()}.{secrets.token_hex(4)}.part")
        parent = os.open(self.path.parent, os.O_RDONLY)
        try:  # a dir_fd makes os.link call linkat(AT_SYMLINK_FOLLOW), which follows the fd link
            os.link(self.write_path, named.name, dst_dir_fd=parent, follow_symlinks=True)
        finally:
            os.close(parent)
        try:
            os.replace(named, self.path)
        except OSError:
            named.unlink(missing_ok=True)
            raise
        self.discard()

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def staged_outputs(pid: int, folder: Path) -> list[str]:
    """The outputs process ``pid`` is writing in ``folder`` now, from ``/proc`` (Linux): an
    unnamed file shows there as ``folder/#inode (deleted)``, the named fallback as its
    ``.part``. For tests and benchmarks that stop a build while it writes."""
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{folder}/") and target.endswith((" (deleted)", ".part")):
            found.append(target)
    return found


def remove_stale_parts(path: Path) -> list[Path]:
    """Remove the temporary files of earlier writes of ``path`` whose process is gone
    (killed before it could clean up); returns what was removed. Files of live processes,
    and of other hosts (a shared folder), are left alone."""
    host = _host_tag().rsplit("-", 1)[0]
    pattern = re.compile(re.escape(f".{path.name}.{host}-") + r"(\d+)\.[^/]*\.part")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # someone else's live process (or an absurd number: leave it)
    return True
