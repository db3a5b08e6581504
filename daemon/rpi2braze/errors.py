"""The exceptions rpi2braze raises, and what the caller should do about each.

    Rpi2BrazeError                 root: catch this to catch everything of ours
    ├── ConfigError                the configuration is invalid; carries every problem at once
    ├── StateError                 the state file cannot be opened or is corrupt; never reset silently
    ├── BadFileError               an export file cannot be read at all; quarantine the workflow
    ├── RowRejected                one row cannot be delivered; dead-letter it, deliver the rest
    ├── SourceError                a source (local folder, SFTP, FTP) failed
    │   └── SourceUnavailable      ... and may come back: retry later, never crash
    ├── ProductionFailed           a child process reading a big folder died or broke: read it again later
    └── DeliveryError              a request to Braze failed
        ├── RetryableDeliveryError      429, 5xx, 408, timeouts, dropped connections: back off, retry
        ├── SplittableDeliveryError     400/413 for a whole batch: split it and resend the halves
        └── PermanentDeliveryError      401/403/404: configuration; stop the target, alert

Foreign exceptions (http.client, ssl, paramiko, ftplib, csv, OSError, sqlite3) are translated where that
library is called, so code above that layer only sees these.
"""


class Rpi2BrazeError(Exception):
    """Root of every exception rpi2braze raises on purpose."""


class ConfigError(Rpi2BrazeError):
    """The configuration is invalid.

    `problems` holds every problem found, each as "key.path: what is wrong".
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class StateError(Rpi2BrazeError):
    """The state file cannot be used. The operator must look; it is never reset silently."""


class BadFileError(Rpi2BrazeError):
    """An export file cannot be read at all (no header, undecodable, no external_id column)."""


class RowRejected(Rpi2BrazeError):
    """One row cannot be sent to Braze. `reason` is a short human sentence."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class SourceError(Rpi2BrazeError):
    """A source failed in a way that retrying will not fix (bad path, refused host key)."""


class SourceUnavailable(SourceError):
    """A source is unreachable right now (server down, mount gone); try again later."""


class ProductionFailed(Rpi2BrazeError):
    """A child process reading a folder (producer.py, children.py) died, was killed or failed unexpectedly."""


class DeliveryError(Rpi2BrazeError):
    """A request to Braze failed. `status` is the HTTP status, or None without a response."""

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class RetryableDeliveryError(DeliveryError):
    """Try the same request again after a backoff; `retry_after` seconds if Braze said so."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message, status)


class SplittableDeliveryError(DeliveryError):
    """Braze refused the batch as a whole (400, 413): split it and resend the halves."""


class PermanentDeliveryError(DeliveryError):
    """The target is misconfigured (401, 403, 404): stop sending to it, keep folders pending."""
