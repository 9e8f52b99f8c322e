"""Errors the tools report to the user as one clear line (no traceback)."""

from __future__ import annotations


class KaraokeError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""


class AudioError(KaraokeError):
    """An input audio file is missing, unreadable, empty, silent, too short or not finite."""


class BundleError(KaraokeError):
    """A bundle is missing, corrupt, of another format version, or fails validation."""


class OutputError(KaraokeError):
    """An output path cannot be written (missing folder, read-only, exists without --force)."""


class DeviceError(KaraokeError):
    """Live audio is unavailable: PortAudio missing, unknown device, stream failure."""


class ConfigError(KaraokeError, ValueError):
    """A setting is out of its range or unknown (a config field, an option, an override).

    Also a ``ValueError``, as librosa's ``ParameterError`` is: callers that validated
    arguments with ``ValueError`` keep working. ``field`` names the offending setting when
    there is one (a CLI names its option from it)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def first_line(error: BaseException | str, limit: int = 120) -> str:
    """The first line of an error's message, at most ``limit`` characters (a library's
    message can span lines or embed a whole file name list; ours must stay one line)."""
    text = str(error)
    return text.splitlines()[0][:limit] if text else ""
