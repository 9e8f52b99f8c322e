"""Errors the tools report to the user as one clear line (no traceback)."""


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
