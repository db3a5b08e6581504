"""The daemon's Prometheus metrics, served by the HTTP listener at GET /metrics.

Every metric lives in this module's private REGISTRY rather than prometheus_client's global one, so
importing a library that registers its own metrics cannot change what we expose, and names never
collide. Names start with `rpi2braze_`. Code elsewhere updates the objects below directly:

    metrics.FOLDERS.labels(source="rpi", outcome="queued").inc()
    with metrics.REQUESTS_IN_FLIGHT.track_inprogress(): ...
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics import disable_created_metrics

# The *_created series (a timestamp per labelled counter) double the output and answer no question an
# operator asks. The switch is process-wide, but only affects how counters are rendered.
disable_created_metrics()

REGISTRY = CollectorRegistry()

FOLDER_OUTCOMES = ("seen", "queued", "delivered", "failed", "quarantined")
ROW_OUTCOMES = ("delivered", "rejected")

# A batch is at most 75 objects; delivery time is dominated by Braze's latency and rate-limit waits,
# from tens of milliseconds to minutes when Braze pushes back.
BATCH_DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

FOLDERS = Counter(
    "rpi2braze_folders_total",
    "Export folders by what happened to them: seen, queued, delivered, failed, quarantined.",
    ["source", "outcome"],
    registry=REGISTRY,
)
ROWS = Counter(
    "rpi2braze_rows_total",
    "Export rows delivered to Braze or rejected (dead-lettered).",
    ["outcome"],
    registry=REGISTRY,
)
REQUESTS = Counter(
    "rpi2braze_requests_total",
    'Requests to Braze /users/track by HTTP status, or "error" when there was no response.',
    ["status"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "rpi2braze_retries_total",
    "Requests to Braze sent again after a retryable failure.",
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "rpi2braze_rate_limited_total",
    "Responses from Braze with status 429.",
    registry=REGISTRY,
)
RATE_LIMITER_WAIT_SECONDS = Counter(
    "rpi2braze_rate_limiter_wait_seconds_total",
    "Seconds senders spent waiting for the shared rate limiter.",
    registry=REGISTRY,
)
REQUESTS_IN_FLIGHT = Gauge(
    "rpi2braze_requests_in_flight",
    "Requests to Braze currently awaiting a response.",
    registry=REGISTRY,
)
CONCURRENCY_LIMIT = Gauge(
    "rpi2braze_concurrency_limit",
    "Requests the adaptive limit currently allows in flight (at most braze.concurrency).",
    registry=REGISTRY,
)
BATCH_DELIVERY_SECONDS = Histogram(
    "rpi2braze_batch_delivery_seconds",
    "Time from sending a batch to Braze acknowledging it, retries and waits included.",
    buckets=BATCH_DELIVERY_BUCKETS,
    registry=REGISTRY,
)
OLDEST_PENDING_FOLDER_AGE_SECONDS = Gauge(
    "rpi2braze_oldest_pending_folder_age_seconds",
    "Age of the oldest folder found but not yet delivered; 0 when none is pending.",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "rpi2braze_queue_depth",
    "Folders waiting for a worker.",
    registry=REGISTRY,
)
SOURCE_UP = Gauge(
    "rpi2braze_source_up",
    "1 if the source's last listing succeeded, 0 if it was unreachable.",
    ["source"],
    registry=REGISTRY,
)
BRAZE_UP = Gauge(
    "rpi2braze_braze_up",
    "0 while Braze fails us (no answer, a 5xx, or the key refused: what /healthz counts as down), "
    "else 1 (also before the first request: an idle daemon is not one Braze refuses).",
    registry=REGISTRY,
)
BRAZE_UP.set(1)

for _outcome in ROW_OUTCOMES:
    ROWS.labels(outcome=_outcome)


_registered_sources: set[str] = set()


def register_sources(names: set[str]) -> None:
    """Create the series of these sources at zero, so dashboards and alerts see them before the
    first folder arrives (a series that does not exist cannot alert); drop the source_up series of
    sources a reload removed, which would otherwise read as down for ever."""
    for name in names:
        for outcome in FOLDER_OUTCOMES:
            FOLDERS.labels(source=name, outcome=outcome)
        SOURCE_UP.labels(source=name)
    for name in _registered_sources - names:
        SOURCE_UP.remove(name)
    _registered_sources.clear()
    _registered_sources.update(names)


def render() -> tuple[bytes, str]:
    """Return the current metrics in Prometheus' text format, and the content type to serve it with."""
    # generate_latest writes text format 0.0.4; say so even where the library's "latest" is newer.
    return generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4
