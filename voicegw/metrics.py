"""Prometheus metrics shared by the gateway's parts (no personal data in labels)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "voicegw_http_requests_total", "Admin API requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram("voicegw_http_request_seconds", "Admin API request latency", ["route"])
AUDIT_EVENTS = Counter("voicegw_audit_events_total", "Audit events appended", ["action"])
PROCESSING_RECORDS = Counter(
    "voicegw_processing_records_total",
    "Speech-provider processing records by fate (written, dropped: queue full, failed: refused)",
    ["fate"],
)
