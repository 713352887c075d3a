"""The Grafana dashboard (deploy/grafana/headshot-bot.json), read without Grafana: every query
names only series the service really exports (asked of a real `PrometheusMetrics`, never a list
written here), reads counters through rate/increase over Grafana's windows, and follows the
replica picker; every panel has a title, the dashboard's data source and an id of its own.

tests/test_prometheus_scrape.py then evaluates each of these queries in a real Prometheus that
scraped the running service."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics.prometheus import PrometheusMetrics
from bot.metrics.sink import ServiceFigures, WorkerFigures

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "headshot-bot.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Series Prometheus makes itself, which a query may read besides the service's.
BUILT_IN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# The only windows a query may use: Grafana's, which follow the scrape interval and the range.
WINDOWS = frozenset({"$__rate_interval", "$__range"})
REPLICA = 'instance=~"$instance"'

Panel = dict[str, Any]

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.:])[a-zA-Z_:][\w:]*")
_KEYWORDS = frozenset(
    {"bool", "and", "or", "unless", "offset", "group_left", "group_right", "inf", "nan"}
)


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[Panel]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where: "panel title / refId", PromQL) for every query of every panel."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"{panel.get('title')} / {target.get('refId')}", target["expr"]))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once label matchers, windows,
    groupings, strings, variables, functions and keywords are taken out."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def exported_series() -> set[str]:
    """The series names a scrape of a real `PrometheusMetrics` carries (`_total`, `_bucket`,
    `_count`, `_sum` included), with one GPU worker so that the per-worker series are there."""
    metrics = PrometheusMetrics()
    worker = WorkerFigures(
        name="gpu-box-1/cuda:0",
        state="live",
        jobs_done=3,
        jobs_failed=1,
        seconds_per_image=4.2,
        heartbeat_age=1.5,
    )
    figures = ServiceFigures(
        queue_depth=0,
        active_jobs=0,
        slots_used=0,
        slots_cap=5,
        provider_degraded=False,
        workers=(worker,),
    )
    exposition = metrics.exposition(figures).decode()
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def exported_families() -> set[str]:
    """Every family the service's registry declares (a counter's name without `_total`)."""
    return {family.name for family in PrometheusMetrics().registry.collect()}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_series()


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, platform) (rate(headshot_x_bucket{a="b c", '
        'instance=~"$instance"}[$__rate_interval]))) / on (job) group_left '
        "max without (worker) (up offset 5m) * 1e3 + headshot_y"
    )
    assert metric_names(expr) == {"headshot_x_bucket", "up", "headshot_y"}


def test_every_query_reads_only_series_the_service_exports(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    found = queries(dashboard)
    assert len(found) >= 30
    for where, expr in found:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            if name.startswith("headshot_"):
                assert name in exported, f"{where}: the service exports no series {name}"
            else:
                assert name in BUILT_IN, f"{where}: {name} is neither the service's nor built in"


def test_every_family_the_service_exports_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    # A metric added to bot/metrics/prometheus.py gets a panel (or a query in one).
    read = {name for _, expr in queries(dashboard) for name in metric_names(expr)}
    for family in exported_families():
        shown = any(re.fullmatch(rf"{family}(_total|_bucket|_count|_sum)?", name) for name in read)
        assert shown, f"no panel reads {family}"


def test_counters_and_histograms_are_read_through_rates_over_grafanas_windows(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    for where, expr in queries(dashboard):
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in WINDOWS, f"{where}: window [{window}]: use $__rate_interval"
        for name in metric_names(expr):
            # A counter's value is its history since the process started: only its rate
            # means anything, and a rate over a gauge means nothing.
            over_time = re.search(rf"\b(rate|increase)\(\s*{name}\b", expr) is not None
            counter = name.endswith(("_total", "_bucket", "_count", "_sum"))
            wrong = "a counter not in rate/increase" if counter else "a gauge in rate/increase"
            assert over_time == counter, f"{where}: {name}: {wrong}"
        if "histogram_quantile" in expr:
            assert re.search(r"by \((?:[^)]*\W)?le\b", expr), f"{where}: keep `le` in the sum"
            assert "_bucket" in expr, where


def test_every_query_follows_the_replica_picker(dashboard: dict[str, Any]) -> None:
    for where, expr in queries(dashboard):
        for name in metric_names(expr):
            if name in BUILT_IN:
                continue
            selectors = re.findall(rf"\b{name}(\{{[^}}]*\}})?", expr)
            for selector in selectors:
                assert REPLICA in selector, f"{where}: {name} without {{{REPLICA}}}"


def test_every_panel_has_a_title_a_data_source_and_an_id_of_its_own(
    dashboard: dict[str, Any],
) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = []
    for panel in panels(dashboard):
        assert str(panel.get("title", "")).strip(), f"panel {panel['id']} has no title"
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']} has no query"
        refs = [target["refId"] for target in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in targets:
            assert target.get("datasource") == DATASOURCE, panel["title"]
    assert len(titles) == len(set(titles)), "two panels with one title"


def test_the_variables_are_the_data_source_and_the_replicas(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "headshot-bot"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert set(variables) == {"DS_PROMETHEUS", "instance"}
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    replicas = variables["instance"]
    assert replicas["datasource"] == DATASOURCE
    assert replicas["includeAll"] and replicas["allValue"] == ".*"
    found = re.fullmatch(r"label_values\((\w+), instance\)", replicas["definition"])
    assert found is not None and found.group(1) in exported
    assert replicas["query"]["query"] == replicas["definition"]
