"""sdd in a fleet: journald, OCSF events through the outbox to a file and NATS JetStream, detections pushed over
NATS, Prometheus metrics. See docs/fleet.md."""

from .service import Fleet

__all__ = ["Fleet"]
