"""Config loading: YAML, environment expansion, strict types, cross-references, secrets, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support import DEMO_CONFIG, ROOT, write_config

from tiermux.config import BackendConfig, Config, ConfigError, load_config, parse_config, read_api_keys
from tiermux.upstream.backend import Backend

SECRET = "sk-live-0123456789abcdef"


def _tree(**changes: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "backends": [
            {"name": "local", "base_url": "http://127.0.0.1:8001/v1", "model": "qwen-9b"},
            {
                "name": "cloud",
                "base_url": "https://api.example.com/v1",
                "model": "big",
                "api_key": "${CLOUD_KEY}",
            },
        ],
        "tiers": {"cheap": ["local", "cloud"], "capable": ["cloud"]},
    }
    tree.update(changes)
    return tree


def _parse(
    tree: dict[str, Any] | str, env: dict[str, str] | None = None, source: str = "conf.yaml"
) -> Config:
    text = tree if isinstance(tree, str) else yaml.safe_dump(tree, sort_keys=False)
    return parse_config(text, source, {"CLOUD_KEY": SECRET} if env is None else env)


def _error(
    tree: dict[str, Any] | str, env: dict[str, str] | None = None, source: str = "conf.yaml"
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _parse(tree, env, source)
    return info.value


# --- valid configs -------------------------------------------------------------------------------


def test_valid_config_loads_with_defaults() -> None:
    config = _parse(_tree())
    assert [b.name for b in config.backends] == ["local", "cloud"]
    assert config.tiers == {"cheap": ["local", "cloud"], "capable": ["cloud"]}
    assert config.default_tier == "cheap"  # the first tier when unset
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.backends[1].api_key == SECRET
    local = config.backends[0]
    assert (local.timeout.connect, local.timeout.read) == (5.0, 300.0)
    assert local.verify_tls is True
    assert local.api_key == ""


def test_full_config_loads() -> None:
    text = """
server: {host: 0.0.0.0, port: 9000, workers: 3, max_body_bytes: 1024, drain_timeout: 2.5, backlog: 64,
         allow_unauthenticated: true}
backends:
  - name: local
    type: openai
    base_url: http://127.0.0.1:8001/v1
    model: qwen-9b
    price: {input: 0.1, output: 0.2}
    timeout: {connect: 1, read: 0.5}
    max_connections: 4
    idle_timeout: 3
    verify_tls: false
    headers: {X-Extra: "1"}
tiers: {only: [local]}
routing: {default_tier: only, aliases: {fast: only}}
"""
    config = _parse(text)
    assert config.server.workers == 3
    assert config.server.max_body_bytes == 1024
    assert config.server.drain_timeout == 2.5
    backend = config.backends[0]
    assert backend.timeout.read == 0.5
    assert backend.price.output == 0.2
    assert backend.max_connections == 4
    assert backend.headers == {"X-Extra": "1"}
    assert config.routing.aliases == {"fast": "only"}
    assert config.default_tier == "only"


def test_demo_config_is_valid() -> None:
    config = load_config(DEMO_CONFIG, env={})
    assert config.default_tier == "cheap"
    assert {b.name for b in config.backends} == {"local-9b", "frontier", "claude"}


# --- environment expansion -----------------------------------------------------------------------


def test_env_expansion_in_strings() -> None:
    text = yaml.safe_dump(_tree(server={"host": "${HOST}"}), sort_keys=False)
    config = _parse(text, {"CLOUD_KEY": SECRET, "HOST": "127.0.0.7"})
    assert config.server.host == "127.0.0.7"


def test_env_expansion_inside_a_longer_string_and_lists() -> None:
    tree = _tree()
    tree["backends"][0]["base_url"] = "http://${VLLM_HOST}:${VLLM_PORT:-8001}/v1"
    tree["tiers"]["cheap"] = ["${FIRST}", "cloud"]
    config = _parse(tree, {"CLOUD_KEY": SECRET, "VLLM_HOST": "gpu-1", "FIRST": "local"})
    assert config.backends[0].base_url == "http://gpu-1:8001/v1"
    assert config.tiers["cheap"] == ["local", "cloud"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, 8080), ({"PORT": "9090"}, 9090), ({"PORT": ""}, 8080)],
)
def test_env_default(env: dict[str, str], expected: int) -> None:
    config = _parse(_tree(server={"port": "${PORT:-8080}"}), {"CLOUD_KEY": SECRET, **env})
    assert config.server.port == expected


def test_int_float_and_bool_fields_from_env() -> None:
    tree = _tree(server={"port": "${PORT}", "workers": "${WORKERS}"})
    tree["backends"][0].update(
        max_connections="${MAXCONN:-8}", timeout={"read": "${READ}"}, verify_tls="${VERIFY:-false}"
    )
    config = _parse(tree, {"CLOUD_KEY": SECRET, "PORT": "9090", "WORKERS": "4", "READ": "0.5"})
    assert config.server.port == 9090
    assert config.server.workers == 4
    assert config.backends[0].max_connections == 8
    assert config.backends[0].timeout.read == 0.5
    assert config.backends[0].verify_tls is False


def test_int_field_from_env_still_type_checked() -> None:
    error = _error(_tree(server={"port": "${PORT}"}), {"CLOUD_KEY": SECRET, "PORT": "eighty"})
    assert error.path == "$.server.port"


def test_missing_env_var_names_the_field_and_variable() -> None:
    tree = _tree()
    tree["backends"][0]["base_url"] = "${VLLM_URL}"
    error = _error(tree)
    assert error.path == "$.backends[0].base_url"
    assert "VLLM_URL" in str(error)
    assert "conf.yaml" in str(error)


def test_missing_env_var_for_the_key() -> None:
    error = _error(_tree(), env={})
    assert error.path == "$.backends[1].api_key"
    assert "CLOUD_KEY" in error.message


def test_env_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_KEY", "from-process-env")
    config = parse_config(yaml.safe_dump(_tree(), sort_keys=False), "conf.yaml")
    assert config.backends[1].api_key == "from-process-env"


# --- strictness ----------------------------------------------------------------------------------


def test_unknown_backend_key_rejected_with_path() -> None:
    tree = _tree()
    tree["backends"][0]["modle"] = "typo"
    error = _error(tree)
    assert error.path == "$.backends[0]"
    assert "modle" in error.message
    assert str(error).startswith("conf.yaml: at $.backends[0]: ")


def test_unknown_nested_key_rejected_with_path() -> None:
    tree = _tree()
    tree["backends"][1]["timeout"] = {"read": 1, "write": 2}
    error = _error(tree)
    assert error.path == "$.backends[1].timeout"
    assert "write" in error.message


def test_unknown_top_level_key_rejected() -> None:
    error = _error(_tree(extra={"a": 1}))
    assert error.path == "$"
    assert "extra" in error.message


@pytest.mark.parametrize(
    ("server", "path"),
    [
        ({"port": "abc"}, "$.server.port"),
        ({"port": 70000}, "$.server.port"),
        ({"port": 0}, "$.server.port"),
        ({"port": [8080]}, "$.server.port"),
        ({"workers": 0}, "$.server.workers"),
        ({"max_body_bytes": -1}, "$.server.max_body_bytes"),
        ({"drain_timeout": 0}, "$.server.drain_timeout"),
        ({"host": 12}, "$.server.host"),
    ],
)
def test_wrong_types_rejected_with_path(server: dict[str, Any], path: str) -> None:
    error = _error(_tree(server=server))
    assert error.path == path
    assert f"at {path}:" in str(error)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("timeout", {"read": -1}, "$.backends[0].timeout.read"),
        ("timeout", {"read": "slow"}, "$.backends[0].timeout.read"),
        ("price", {"input": -0.5}, "$.backends[0].price.input"),
        ("max_connections", 0, "$.backends[0].max_connections"),
        ("type", "grpc", "$.backends[0].type"),
        ("headers", ["x"], "$.backends[0].headers"),
        ("verify_tls", "maybe", "$.backends[0].verify_tls"),
    ],
)
def test_wrong_backend_types_rejected_with_path(field: str, value: Any, path: str) -> None:
    tree = _tree()
    tree["backends"][0][field] = value
    assert _error(tree).path == path


def test_missing_required_field() -> None:
    tree = _tree()
    del tree["backends"][0]["model"]
    error = _error(tree)
    assert error.path == "$.backends[0]"
    assert "model" in error.message


def test_missing_sections() -> None:
    assert "backends" in _error({"tiers": {"a": ["x"]}}).message
    assert "tiers" in _error({"backends": _tree()["backends"]}).message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    error = _error(text)
    assert error.path == "$"


def test_invalid_yaml_names_file_and_line() -> None:
    error = _error("backends: [\n  {name: a,\n", source="broken.yaml")
    assert str(error).startswith("broken.yaml: ")
    assert "line" in str(error)


# --- cross-references ----------------------------------------------------------------------------


def test_tier_naming_unknown_backend() -> None:
    error = _error(_tree(tiers={"cheap": ["nope", "cloud"]}))
    assert error.path == "$.tiers.cheap[0]"
    assert "nope" in error.message


def test_tier_naming_unknown_backend_later_in_chain() -> None:
    error = _error(_tree(tiers={"cheap": ["local"], "capable": ["cloud", "gone"]}))
    assert error.path == "$.tiers.capable[1]"


def test_empty_tier_and_empty_lists() -> None:
    assert _error(_tree(tiers={"cheap": []})).path == "$.tiers.cheap"
    assert _error(_tree(tiers={})).path == "$.tiers"
    assert _error(_tree(backends=[], tiers={"a": ["x"]})).path == "$.backends"


def test_duplicate_backend_names() -> None:
    tree = _tree()
    tree["backends"][1]["name"] = "local"
    error = _error(tree)
    assert error.path == "$.backends[1].name"
    assert "duplicate" in error.message and "local" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/v1",
        "127.0.0.1:8000/v1",
        "localhost:8000",
        "http://",
        "/v1",
        "",
        "http:///v1",
        "https//x/v1",
    ],
)
def test_bad_base_url(url: str) -> None:
    tree = _tree()
    tree["backends"][0]["base_url"] = url
    error = _error(tree)
    assert error.path == "$.backends[0].base_url"


def test_routing_references() -> None:
    assert _error(_tree(routing={"default_tier": "gold"})).path == "$.routing.default_tier"
    assert _error(_tree(routing={"aliases": {"fast": "gold"}})).path == "$.routing.aliases.fast"
    config = _parse(_tree(routing={"default_tier": "capable", "aliases": {"fast": "cheap"}}))
    assert config.default_tier == "capable"


# --- secrets -------------------------------------------------------------------------------------


def test_literal_api_key_refused() -> None:
    tree = _tree()
    tree["backends"][1]["api_key"] = SECRET
    error = _error(tree)
    assert error.path == "$.backends[1].api_key"
    assert "environment" in error.message and "api_key_file" in error.message
    assert SECRET not in str(error)


def test_literal_numeric_api_key_refused() -> None:
    tree = _tree()
    tree["backends"][1]["api_key"] = 1234567890
    error = _error(tree)
    assert error.path == "$.backends[1].api_key"
    assert "1234567890" not in str(error)


def test_empty_api_key_is_allowed() -> None:
    tree = _tree()
    tree["backends"][1]["api_key"] = ""
    assert _parse(tree).backends[1].api_key == ""


def test_api_key_file_is_read(tmp_path: Path) -> None:
    key_file = tmp_path / "cloud.key"
    key_file.write_text(f"  {SECRET}\n", encoding="utf-8")
    tree = _tree()
    del tree["backends"][1]["api_key"]
    tree["backends"][1]["api_key_file"] = str(key_file)
    config = _parse(tree)
    backend_config = config.backends[1]
    assert backend_config.api_key == ""
    assert read_api_keys(backend_config) == [SECRET]
    request = Backend(backend_config).serialise("POST", "/chat/completions", b"{}")
    assert f"\r\nAuthorization: Bearer {SECRET}\r\n".encode() in request
    assert SECRET not in repr(Backend(backend_config))


def test_api_key_from_env_reaches_the_request_head() -> None:
    backend = Backend(_parse(_tree()).backends[1])
    request = backend.serialise("POST", "/chat/completions", b'{"model":"big"}')
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Authorization: Bearer {SECRET}".encode() in head.split(b"\r\n")
    assert b"Host: api.example.com" in head.split(b"\r\n")
    assert b"Content-Length: 15" in head.split(b"\r\n")
    assert body == b'{"model":"big"}'


def test_backend_without_key_sends_no_authorization() -> None:
    request = Backend(_parse(_tree()).backends[0]).serialise("POST", "/chat/completions", b"{}")
    assert b"authorization" not in request.lower()
    assert b"Host: 127.0.0.1:8001\r\n" in request


def test_missing_api_key_file(tmp_path: Path) -> None:
    tree = _tree()
    del tree["backends"][1]["api_key"]
    tree["backends"][1]["api_key_file"] = str(tmp_path / "absent.key")
    assert _error(tree).path == "$.backends[1].api_key_file"


def test_api_key_and_api_key_file_together(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("k")
    tree = _tree()
    tree["backends"][1]["api_key_file"] = str(key_file)
    assert _error(tree).path == "$.backends[1].api_key_file"


def test_repr_never_shows_the_key() -> None:
    config = _parse(_tree())
    cloud = config.backends[1]
    assert cloud.api_key == SECRET
    for text in (
        repr(cloud),
        str(cloud),
        repr(config),
        str(config),
        repr(config.backends),
        repr(Backend(cloud)),
    ):
        assert SECRET not in text
    assert "***" in repr(cloud)
    assert "cloud" in repr(cloud)


def test_backend_config_repr_with_no_key() -> None:
    local = BackendConfig(name="local", base_url="http://127.0.0.1:1/v1", model="m")
    assert "api_keys=[]" in repr(local)


# --- exposure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_non_loopback_host_without_client_keys_is_refused(host: str) -> None:
    error = _error(_tree(server={"host": host}))
    assert error.path == "$.server.host"
    assert "auth.keys" in error.message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_host_needs_no_client_keys(host: str) -> None:
    assert _parse(_tree(server={"host": host})).server.host == host


def test_client_keys_or_explicit_opt_out_allow_any_host() -> None:
    env = {"CLOUD_KEY": SECRET, "CLIENT_KEY": "client-1"}
    config = _parse(_tree(server={"host": "0.0.0.0"}, auth={"keys": ["${CLIENT_KEY}"]}), env)
    assert config.auth.keys == ["client-1"]
    config = _parse(_tree(server={"host": "0.0.0.0", "allow_unauthenticated": True}))
    assert config.server.allow_unauthenticated is True


def test_literal_client_key_refused() -> None:
    error = _error(_tree(auth={"keys": ["${CLIENT_KEY:-x}", "plain-client-key"]}))
    assert error.path == "$.auth.keys[1]"
    assert "plain-client-key" not in str(error)


def test_empty_client_key_refused() -> None:
    error = _error(_tree(auth={"keys": ["${CLIENT_KEY:-}"]}))
    assert error.path == "$.auth.keys[0]"


# --- files ---------------------------------------------------------------------------------------


def test_config_error_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, _tree(server={"port": "abc"}), "named-config.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"CLOUD_KEY": SECRET})
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: at $.server.port: ")


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, _tree())
    assert load_config(path, env={"CLOUD_KEY": SECRET}).backends[1].api_key == SECRET


# --- the command line ----------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tiermux", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=60,
    )


def test_cli_check_demo_config() -> None:
    result = _cli("check", "--config", str(DEMO_CONFIG))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "budgets: none; state: this machine's shared memory" in result.stdout
    assert "metrics: on; access log: off" in result.stdout
    assert "backends: local-9b (openai, 0 keys), frontier (openai, 1 key), claude (anthropic, 1 key)" in (
        result.stdout
    )
    assert "demo-key" not in result.stdout
    assert (
        "cache: on (300s, 64 MiB per worker, deterministic requests only, identical requests" in result.stdout
    )


def test_cli_check_names_budgets_and_state(tmp_path: Path) -> None:
    tree = _tree()
    tree["services"] = {
        "team": {"budget": {"daily_usd": 5}},
        "default": {"budget": {"daily_usd": 1, "policy": "reject"}},
    }
    tree["state"] = {"backend": "redis", "url": "redis://127.0.0.1:1/0", "prefix": "fleet"}
    result = _cli("check", "--config", str(write_config(tmp_path, tree)), env={"CLOUD_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    assert (
        "budgets: team $5/day (downgrade to cheap), default $1/day (reject); state: redis, prefix 'fleet'"
        in result.stdout
    )


def test_cli_check_bad_config(tmp_path: Path) -> None:
    tree = _tree()
    tree["tiers"]["cheap"] = ["local", "missing-backend"]
    path = write_config(tmp_path, tree, "bad.yaml")
    result = _cli("check", "--config", str(path), env={"CLOUD_KEY": SECRET})
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "$.tiers.cheap[1]" in result.stderr
    assert "missing-backend" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_check_missing_file(tmp_path: Path) -> None:
    result = _cli("check", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr


def test_cli_serve_refuses_a_bad_config_without_starting(tmp_path: Path) -> None:
    path = write_config(tmp_path, _tree(server={"port": "abc"}), "bad-serve.yaml")
    result = _cli("serve", "--config", str(path), env={"CLOUD_KEY": SECRET})
    assert result.returncode == 2
    assert "bad-serve.yaml" in result.stderr and "$.server.port" in result.stderr


def test_cli_serve_refuses_an_open_relay(tmp_path: Path) -> None:
    path = write_config(tmp_path, _tree(), "open.yaml")
    result = _cli("serve", "--config", str(path), "--host", "0.0.0.0", env={"CLOUD_KEY": SECRET})
    assert result.returncode == 2
    assert "auth.keys" in result.stderr


def test_cli_help() -> None:
    top = _cli("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout and "check" in top.stdout
    serve = _cli("serve", "--help")
    assert serve.returncode == 0
    for option in ("--config", "--port", "--workers", "--host"):
        assert option in serve.stdout


def test_cli_requires_a_command() -> None:
    result = _cli()
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


@pytest.mark.parametrize(
    ("services", "field", "message"),
    [
        ({"alpha": {"keys": ["literal-key"]}}, "$.services.alpha.keys[0]", "environment"),
        ({"default": {"keys": ["${K1}"]}}, "$.services.default.keys", "no keys of its own"),
        (
            {"alpha": {"budget": {"daily_usd": 5, "downgrade_tier": "nope"}}},
            "$.services.alpha.budget.downgrade_tier",
            "unknown tier",
        ),
        ({"alpha": {"budget": {"daily_usd": -1}}}, "$.services.alpha.budget.daily_usd", ">= 0"),
        ({"alpha": {"budget": {"daily_usd": 1, "policy": "ignore"}}}, "$.services.alpha.budget.policy", ""),
        ({"alpha": {"budget": {}}}, "$.services.alpha.budget", "daily_usd"),
        (
            {"alpha": {"keys": ["${K1}"]}, "beta": {"keys": ["${K1}"]}},
            "$.services.beta.keys[0]",
            "another service",
        ),
    ],
    ids=[
        "literal-key",
        "default-with-keys",
        "unknown-downgrade-tier",
        "negative-budget",
        "unknown-policy",
        "budget-without-limit",
        "shared-key",
    ],
)
def test_service_errors_name_the_field(services: dict[str, object], field: str, message: str) -> None:
    text = yaml.safe_dump(
        {
            "backends": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m"}],
            "tiers": {"cheap": ["a"]},
            "services": services,
        }
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text, "t.yaml", env={"K1": "one"})
    assert field in str(error.value) and message in str(error.value)


@pytest.mark.parametrize(
    ("admin_keys", "message"),
    [(["literal"], "environment"), (["${K1}"], "not be a client key"), (["${EMPTY}"], "empty key")],
    ids=["literal", "also-a-client-key", "empty"],
)
def test_admin_key_errors_name_the_field(admin_keys: list[str], message: str) -> None:
    text = yaml.safe_dump(
        {
            "backends": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m"}],
            "tiers": {"cheap": ["a"]},
            "auth": {"keys": ["${K1}"], "admin_keys": admin_keys},
        }
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text, "t.yaml", env={"K1": "one", "EMPTY": ""})
    assert "$.auth.admin_keys[0]" in str(error.value) and message in str(error.value)


def test_the_default_service_may_have_a_budget() -> None:
    text = yaml.safe_dump(
        {
            "backends": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m"}],
            "tiers": {"cheap": ["a"], "capable": ["a"]},
            "services": {"default": {"budget": {"daily_usd": 2.5, "policy": "reject"}}},
            "budgets": {"timezone": "Europe/Paris", "assumed_output_tokens": 1000},
        }
    )
    config = parse_config(text, "t.yaml")
    assert config.service_names == ["default"]
    rule = config.budget_rules["default"]
    assert (rule.daily_usd, rule.policy, rule.downgrade_tier) == (2.5, "reject", None)
    assert config.budgets.timezone == "Europe/Paris"


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"budgets": {"timezone": "Mars/Olympus"}}, "$.budgets.timezone", "unknown time zone"),
        ({"budgets": {"assumed_output_tokens": 0}}, "$.budgets.assumed_output_tokens", ">= 1"),
        ({"state": {"backend": "redis"}}, "$.state.url", "needs a url"),
        ({"state": {"backend": "redis", "url": "http://x:1"}}, "$.state.url", "redis://"),
        ({"state": {"url": "redis://127.0.0.1:6379/0"}}, "$.state.url", "only used with backend: redis"),
        ({"state": {"backend": "etcd"}}, "$.state.backend", ""),
        ({"state": {"backend": "redis", "url": "redis://h:1", "prefix": "a b"}}, "$.state.prefix", "spaces"),
        ({"state": {"backend": "redis", "url": "redis://h:1", "on_failure": "x"}}, "$.state.on_failure", ""),
        ({"cache": {"shared": True}}, "$.cache.shared", "set state.backend: redis"),
        ({"cache": {"ttl": 0}}, "$.cache.ttl", ""),
        ({"cache": {"max_byte": 10}}, "$.cache", "max_byte"),
        (
            {"access_log": {"enabled": True, "path": "/no/such/dir/a.log"}},
            "$.access_log.path",
            "does not exist",
        ),
        ({"metrics": {"enabled": "yes"}}, "$.metrics.enabled", ""),
        ({"quality": {"enabled": True}}, "$.quality.reference", "required when enabled"),
        ({"quality": {"enabled": True, "reference": "nope"}}, "$.quality.reference", "unknown backend"),
        ({"quality": {"sample_rates": {"poetry": 0.5}}}, "$.quality.sample_rates.poetry", "unknown category"),
        ({"quality": {"sample_rate": 1.5}}, "$.quality.sample_rate", ""),
        ({"quality": {"busy_lag_ms": -1}}, "$.quality.busy_lag_ms", ""),
        (
            {"quality": {"cascade": {"poetry": {"threshold": -1}}}},
            "$.quality.cascade.poetry",
            "unknown category",
        ),
        ({"quality": {"cascade": {"code": {"threshold": 0.5}}}}, "$.quality.cascade.code.threshold", ""),
    ],
    ids=[
        "timezone",
        "output-cap",
        "redis-no-url",
        "redis-bad-url",
        "url-without-redis",
        "backend",
        "prefix",
        "failure",
        "shared-cache-without-redis",
        "cache-ttl",
        "cache-typo",
        "access-log-directory",
        "metrics-type",
        "quality-without-reference",
        "quality-unknown-reference",
        "quality-unknown-category",
        "quality-rate",
        "quality-busy-lag",
        "cascade-category",
        "cascade-threshold",
    ],
)
def test_budget_and_state_errors_name_the_field(extra: dict[str, object], field: str, message: str) -> None:
    text = yaml.safe_dump(
        {
            "backends": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m"}],
            "tiers": {"cheap": ["a"]},
            **extra,
        }
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text, "t.yaml")
    assert field in str(error.value) and message in str(error.value)


def test_the_access_log_path_is_found_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    tree = _tree(access_log={"enabled": True, "path": "logs/access.jsonl"})
    config = load_config(write_config(tmp_path, tree), env={"CLOUD_KEY": "k"})
    assert config.access_log.path == str(tmp_path / "logs" / "access.jsonl")


# --- Anthropic backends and several keys -------------------------------------------------------


def _claude(**fields: Any) -> dict[str, Any]:
    entry = {"name": "claude", "base_url": "https://api.anthropic.example/v1", "model": "claude-x"}
    return {**entry, "type": "anthropic", **fields}


def test_an_anthropic_backend_sends_its_key_as_x_api_key_with_the_version() -> None:
    config = _parse(_tree(backends=[_claude(api_key="${CLOUD_KEY}")], tiers={"t": ["claude"]}))
    backend = Backend(config.backends[0])
    request = backend.serialise("POST", "/messages", b"{}")
    assert request.startswith(b"POST /v1/messages HTTP/1.1\r\n")
    assert f"\r\nx-api-key: {SECRET}\r\n".encode() in request
    assert b"\r\nanthropic-version: 2023-06-01\r\n" in request
    assert b"Authorization" not in request
    assert backend.dialect == "anthropic"


def test_several_keys_each_get_their_own_header_and_none_shows_in_reprs() -> None:
    env = {"K1": "sk-one-0001", "K2": "sk-two-0002", "CLOUD_KEY": SECRET}
    config = _parse(_tree(backends=[_claude(api_keys=["${K1}", "${K2}"])], tiers={"t": ["claude"]}), env)
    backend = Backend(config.backends[0])
    assert b"x-api-key: sk-two-0002\r\n" in backend.serialise("POST", "/messages", b"{}", key=1)
    assert backend.keys.count == 2
    for text in (repr(config.backends[0]), repr(config), repr(backend), repr(backend.keys)):
        assert "sk-one" not in text and "sk-two" not in text


def test_literal_or_empty_keys_in_a_list_are_refused_with_their_path() -> None:
    error = _error(_tree(backends=[_claude(api_keys=["sk-literal"])], tiers={"t": ["claude"]}))
    assert error.path == "$.backends[0].api_keys[0]"
    error = _error(_tree(backends=[_claude(api_keys=["${EMPTY}"])], tiers={"t": ["claude"]}), {"EMPTY": ""})
    assert error.path == "$.backends[0].api_keys[0]" and "empty" in error.message
    both = _claude(api_key="${CLOUD_KEY}", api_keys=["${CLOUD_KEY}"])
    assert "one of" in _error(_tree(backends=[both], tiers={"t": ["claude"]})).message


def test_a_key_file_may_hold_several_keys(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# rotation\nsk-a\n\n  sk-b  \n", encoding="utf-8")
    config = _parse(_tree(backends=[_claude(api_key_file=str(key_file))], tiers={"t": ["claude"]}))
    assert read_api_keys(config.backends[0]) == ["sk-a", "sk-b"]


def test_an_unknown_backend_type_and_bad_retry_settings_name_the_field() -> None:
    assert _error(_tree(backends=[_claude(type="gemini")], tiers={"t": ["claude"]})).path == (
        "$.backends[0].type"
    )
    bad = _claude(retry={"attempts": -1})
    assert _error(_tree(backends=[bad], tiers={"t": ["claude"]})).path == "$.backends[0].retry.attempts"
