"""Krenalis event stream: Segment-compatible ingestion into NATS JetStream, per-pipeline workers."""

__version__ = "0.1.0"
