"""Prometheus view of the SIP service's defences: screening, pending-request shares, bans.

The counters live in the sans-IO cores (:class:`~voicegw.sip.edge.EdgeCounters`,
:class:`~voicegw.sip.security.PendingShares`, :class:`~voicegw.sip.security.BanList`),
which may not import the metrics layer; this collector reads them at scrape time,
so the packet path pays nothing for being observed. Labels are reasons and
transports only: never a source address (an attacker controls how many there are,
and addresses are personal data).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from voicegw.calls.sip_service import SipService

__all__ = ["SipServiceCollector"]


class SipServiceCollector(Collector):
    """Exports one :class:`SipService`'s counters; :meth:`register` / :meth:`unregister`."""

    def __init__(self, service: SipService) -> None:
        self._service = service
        self._registry: CollectorRegistry | None = None

    def register(self, registry: CollectorRegistry = REGISTRY) -> None:
        registry.register(self)
        self._registry = registry

    def unregister(self) -> None:
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    def collect(self) -> Iterator[Metric]:
        counters = self._service.screen.counters
        yield CounterMetricFamily(
            "voicegw_sip_inbound_messages",
            "Datagrams and framed stream messages screened at the SIP edge",
            value=counters.received,
        )
        yield CounterMetricFamily(
            "voicegw_sip_bad_requests",
            "Unparseable requests answered 400 at the SIP edge",
            value=counters.replied_400,
        )
        dropped = CounterMetricFamily(
            "voicegw_sip_dropped_messages",
            "Messages dropped at the SIP edge, by reason (banned, rate_limited, ...)",
            labels=["reason"],
        )
        for reason, count in sorted(counters.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        by_transport = CounterMetricFamily(
            "voicegw_sip_dropped_by_transport",
            "Messages dropped at the SIP edge, by transport",
            labels=["transport"],
        )
        for transport, count in sorted(counters.dropped_by_transport.items()):
            by_transport.add_metric([transport], count)
        yield by_transport

        pending = self._service.pending
        yield GaugeMetricFamily(
            "voicegw_sip_pending_requests",
            "Requests being worked on (credential lookups, routing) now",
            value=len(pending),
        )
        yield GaugeMetricFamily(
            "voicegw_sip_pending_requests_peak",
            "The most requests worked on at once since start",
            value=pending.peak,
        )
        yield CounterMetricFamily(
            "voicegw_sip_pending_refused",
            "Requests answered 503 because their source's share or the total was used up",
            value=pending.refused,
        )
        bans = self._service.bans
        yield GaugeMetricFamily(
            "voicegw_sip_banned_sources",
            "Sources on the ban list (expired bans included until touched)",
            value=bans.banned,
        )
        yield GaugeMetricFamily(
            "voicegw_sip_failure_tracked_sources",
            "Sources with authentication failures on record",
            value=bans.tracked,
        )
