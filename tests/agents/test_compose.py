"""docker-compose.yml and deploy/ checked statically: Docker is not available on these machines, so the file is
parsed and checked against the code (settings, commands, metrics), never run here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from kairos.agents.ops import main as ops_main
from kairos.agents.settings import Settings
from kairos.engine import metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_are_all_there(compose):
    assert {"kafka", "redis", "worker", "api", "prometheus", "grafana"} <= set(compose["services"])
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"], "KRaft mode: no ZooKeeper"
    assert "zookeeper" not in compose["services"]
    assert compose["services"]["worker"]["deploy"]["replicas"] >= 2


def _kairos_env(compose) -> dict[str, dict]:
    return {name: {k: v for k, v in (svc.get("environment") or {}).items() if k.startswith("KAIROS_")}
            for name, svc in compose["services"].items()}  # fmt: skip


def test_every_kairos_variable_is_a_real_setting_with_a_valid_value(compose, monkeypatch):
    fields = set(Settings.model_fields)
    for service, env in _kairos_env(compose).items():
        for var in env:
            assert var[len("KAIROS_") :].lower() in fields, f"{service}: {var} is not a setting"
        if not env:
            continue
        for var in list(__import__("os").environ):
            if var.startswith("KAIROS_"):
                monkeypatch.delenv(var)
        for var, value in env.items():
            resolved = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))  # compose's ${VAR:-default}
            if resolved:
                monkeypatch.setenv(var, resolved)
        settings = Settings()  # raises on an invalid value
        assert settings.kafka_bootstrap_servers == "kafka:9092" and settings.redis_url.startswith("redis://redis:")
    assert _kairos_env(compose)["worker"]["KAIROS_PARTITIONS"] == _kairos_env(compose)["api"]["KAIROS_PARTITIONS"]


def test_ports_are_well_formed_and_distinct(compose):
    published = []
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host, _, container = str(port).partition(":")
            assert host.isdigit() and container.isdigit(), f"{name}: {port}"
            published.append(int(host))
    assert len(published) == len(set(published))
    assert "8080:8080" in compose["services"]["api"]["ports"]


def test_kairos_commands_parse(compose):
    """The compose commands are real: argparse accepts them (``--help`` would exit, so parse without running)."""
    import argparse

    from kairos.agents.cli import build_parser

    for name in ("worker", "copywriter", "api"):
        command = compose["services"][name]["command"]
        assert command[:3] in (["python", "-m", "kairos.agents.ops"], ["python", "-m", "kairos"]), name
        parse = ops_main if command[2] == "kairos.agents.ops" else build_parser().parse_args
        parser_error = []

        def fail(message, _errors=parser_error):
            _errors.append(message)
            raise SystemExit(2)

        original = argparse.ArgumentParser.error
        argparse.ArgumentParser.error = lambda self, message: fail(message)
        try:
            with pytest.raises(SystemExit) as caught:
                parse([*command[3:], "--definitely-not-an-option"])
        finally:
            argparse.ArgumentParser.error = original
        assert parser_error and "unrecognized arguments: --definitely-not-an-option" in parser_error[0], caught.value


def test_prometheus_scrapes_the_api_and_every_worker(compose):
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["kairos-api"]["static_configs"][0]["targets"] == ["api:8080"]
    worker_sd = jobs["kairos-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"] and str(worker_sd["port"]) in compose["services"]["worker"]["command"]
    volumes = compose["services"]["prometheus"]["volumes"]
    assert any(v.startswith("./deploy/prometheus.yml:") for v in volumes)


def test_grafana_dashboard_queries_only_declared_metrics(compose):
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/kairos.json").read_text())
    declared = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {re.sub(r"_(total|bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"kairos_[a-z_]+", e)}
    assert used and used <= {re.sub(r"_total$", "", d) for d in declared}, used - declared
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards/kairos.yml").read_text())["providers"][0]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro") for v in compose["services"]["grafana"]["volumes"])
    assert (ROOT / "deploy/Dockerfile").exists()
