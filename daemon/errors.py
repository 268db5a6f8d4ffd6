"""The daemon's exception tree; each class has one meaning.

    DaemonError                 anything the daemon reports to a user as one clear line
     ├── BundleError            the model bundle is missing, malformed, or fails its checksums
     ├── BackendError           a backend cannot run here (Core ML off macOS, missing runtime package)
     ├── AudioError             an audio input cannot be read, is empty, or has the wrong format
     ├── ConfigError            an option has a bad value (unknown language, too many tokens, ...)
     ├── DownloadError          a model cannot be fetched or verified (network, Hub, disk, licence not accepted)
     └── CaptureError           an audio device is missing, unusable, or cannot be opened
"""

from __future__ import annotations


class DaemonError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""


class BundleError(DaemonError):
    """The model bundle is missing, malformed, or does not match its checksums."""


class BackendError(DaemonError):
    """A backend cannot be loaded or run on this machine."""


class AudioError(DaemonError):
    """An audio input cannot be read, is empty, or has an unusable format."""


class ConfigError(DaemonError):
    """An option has a value the daemon cannot use."""


class DownloadError(DaemonError):
    """A model cannot be downloaded or verified (network, Hub, disk), or its licence was not accepted."""


class CaptureError(DaemonError):
    """An audio input device is missing, unusable, or cannot be opened."""
