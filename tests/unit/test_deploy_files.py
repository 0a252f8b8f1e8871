"""The operator files under deploy/ stay valid: the Grafana dashboard, the Prometheus alert rules
and the example scrape configuration, and every query in them names only metrics tiermux exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tiermux-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yaml"

# What GET /metrics exports. This must match the metrics tiermux really serves: rename or add a
# metric there and here together, then fix the dashboard and the alerts this test points at.
COUNTERS = frozenset(
    {
        "tiermux_requests_total",
        "tiermux_tokens_total",
        "tiermux_cost_usd_total",
        "tiermux_savings_usd_total",
        "tiermux_cache_hits_total",
        "tiermux_cache_misses_total",
        "tiermux_cache_dedups_total",
        "tiermux_cache_bypasses_total",
        "tiermux_cache_stored_total",
        "tiermux_cache_evictions_total",
        "tiermux_routing_decisions_total",
    }
)
HISTOGRAMS = frozenset(
    {
        "tiermux_request_duration_seconds",
        "tiermux_time_to_first_token_seconds",
        "tiermux_upstream_duration_seconds",
    }
)
GAUGES = frozenset(
    {
        "tiermux_budget_limit_usd",
        "tiermux_budget_remaining_usd",
        "tiermux_budget_spent_usd",
        "tiermux_backend_up",
        "tiermux_backend_in_flight",
    }
)
EXPORTED = COUNTERS | HISTOGRAMS | GAUGES

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC = re.compile(r"tiermux_[a-z_]+")
# A metric name, its label matchers if any, and a range selector if any.
SELECTOR = re.compile(r"(tiermux_[a-z_]+)\s*(\{[^{}]*\})?\s*(\[[^\]]+\])?")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"warning", "critical"}


def _load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _load_alerts() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return rules


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' own panels (collapsed rows hold theirs) included."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _query_panels() -> list[dict[str, Any]]:
    return [p for p in _panels(_load_dashboard()["panels"]) if p["type"] != "row"]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load_alerts()["groups"] for rule in group["rules"] if "alert" in rule]


def _all_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard and every rule."""
    exprs = [(f"panel {p['title']!r}", t["expr"]) for p in _query_panels() for t in p["targets"]]
    exprs += [(f"alert {r['alert']}", r["expr"]) for r in _alert_rules()]
    variables = _load_dashboard()["templating"]["list"]
    exprs += [(f"variable {v['name']}", v["definition"]) for v in variables if v["type"] == "query"]
    return exprs


def _base_name(name: str) -> str:
    """A histogram's series (_bucket, _sum, _count) stand for the histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def test_the_exported_sets_do_not_overlap() -> None:
    assert not COUNTERS & HISTOGRAMS and not COUNTERS & GAUGES and not HISTOGRAMS & GAUGES
    assert all(name.endswith("_total") for name in COUNTERS)
    assert not any(name.endswith("_total") for name in HISTOGRAMS | GAUGES)


# ---- the dashboard


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = _load_dashboard()
    assert dashboard["title"] and dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query" and variables["instance"]["type"] == "query"
    assert "$job" in variables["instance"]["definition"]


def test_every_dashboard_panel_queries_prometheus_through_the_datasource_variable() -> None:
    panels = _query_panels()
    assert len(panels) >= 20
    for panel in panels:
        assert panel["title"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_dashboard_query_filters_by_job_and_instance() -> None:
    for panel in _query_panels():
        for target in panel["targets"]:
            for match in SELECTOR.finditer(target["expr"]):
                matchers = match.group(2) or ""
                assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (
                    panel["title"],
                    match.group(0),
                )


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = list(_panels(_load_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[x, y] = panel["title"]


def test_the_dashboard_has_the_operator_rows() -> None:
    rows = {p["title"] for p in _load_dashboard()["panels"] if p["type"] == "row"}
    assert {
        "Spend and savings",
        "Routing mix",
        "Latency",
        "Errors",
        "Backend health",
        "Cache",
        "Budgets",
    } <= rows


def test_the_dashboard_shows_every_exported_metric() -> None:
    shown = {_base_name(m) for p in _query_panels() for t in p["targets"] for m in METRIC.findall(t["expr"])}
    assert shown == EXPORTED


# ---- the alert rules


def test_every_alert_rule_is_complete() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert rule["expr"].strip(), rule["alert"]
        assert DURATION.match(str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), rule["alert"]
        assert "{{ $labels." in annotations["summary"] + annotations["description"], rule["alert"]


def test_the_expected_alerts_are_there() -> None:
    rules = {r["alert"]: r for r in _alert_rules()}
    assert rules["TiermuxBudgetNearlySpent"]["labels"]["severity"] == "warning"
    assert "< 0.1" in rules["TiermuxBudgetNearlySpent"]["expr"]
    assert rules["TiermuxBudgetExhausted"]["labels"]["severity"] == "critical"
    assert "< 0.02" in rules["TiermuxBudgetExhausted"]["expr"]
    assert rules["TiermuxBackendDown"]["expr"].strip() == "tiermux_backend_up == 0"
    assert rules["TiermuxBackendDown"]["for"] == "2m"
    error_rate = rules["TiermuxHighErrorRate"]["expr"]
    assert 'status=~"5.."' in error_rate and "[5m]" in error_rate and "> 0.05" in error_rate


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the scrape configuration


def test_the_scrape_config_scrapes_metrics_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert [(PROMETHEUS.parent / f).resolve() for f in config["rule_files"]] == [ALERTS.resolve()]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "tiermux"
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"]
    assert job["static_configs"][0]["targets"]
    # TiermuxDown watches the scrape job by name.
    down = next(r for r in _alert_rules() if r["alert"] == "TiermuxDown")
    assert f'job="{job["job_name"]}"' in down["expr"]


# ---- the PromQL in both


@pytest.mark.parametrize(("where", "expr"), _all_exprs())
def test_queries_name_only_exported_metrics(where: str, expr: str) -> None:
    names = {_base_name(m) for m in METRIC.findall(expr)}
    assert names or expr.startswith("up{"), where  # Prometheus's own scrape health
    assert names <= EXPORTED, (where, names - EXPORTED)


@pytest.mark.parametrize(("where", "expr"), _all_exprs())
def test_queries_use_each_metric_type_correctly(where: str, expr: str) -> None:
    """Counters (a histogram's series too) only through a range (rate/increase), gauges never;
    quantiles only over the rate of _bucket grouped by le."""
    if where.startswith("variable"):
        return  # label_values() takes a bare selector
    for match in SELECTOR.finditer(expr):
        name, ranged = match.group(1), match.group(3) is not None
        base = _base_name(name)
        if base in GAUGES:
            assert not ranged, (where, match.group(0))
        else:
            assert name != base or base in COUNTERS, (where, f"{name}: a histogram without its suffix")
            assert ranged, (where, match.group(0))
            prefix = expr[: match.start()].rstrip()
            assert prefix.endswith(("rate(", "increase(")), (where, match.group(0))
    for quantile in re.finditer(r"histogram_quantile\(([^,]+),(.*)", expr):
        assert 0 < float(quantile.group(1)) < 1, where
        assert "le)" in quantile.group(2) and "_bucket" in quantile.group(2), where


@pytest.mark.parametrize(("where", "expr"), _all_exprs())
def test_queries_are_balanced(where: str, expr: str) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_string = False
    for char in expr:
        if char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack and stack.pop() == pairs[char], (where, expr)
    assert not stack and not in_string, (where, expr)
