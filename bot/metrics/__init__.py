"""The service's figures for Prometheus: what is counted (`Metrics`), how a scrape reads what
is counted at that moment (`ServiceFigures`), and `/metrics` itself (bot/metrics/endpoint.py)."""

from __future__ import annotations

from bot.metrics.sink import Metrics, ServiceFigures, WorkerFigures


def open_metrics(enabled: bool) -> Metrics:
    """Prometheus' series, or (METRICS=0) a sink that records nothing."""
    if not enabled:
        return Metrics()
    from bot.metrics.prometheus import PrometheusMetrics

    return PrometheusMetrics()


__all__ = ["Metrics", "ServiceFigures", "WorkerFigures", "open_metrics"]
