"""The configs the project ships must stay valid: the documented example and the demo."""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml

from tiermux.config import Config, ServerConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.yaml"
DEMO = ROOT / "src" / "tiermux" / "examples" / "demo.yaml"


def _documented_keys(struct: type[msgspec.Struct]) -> set[str]:
    return {field.name for field in msgspec.structs.fields(struct)}


def test_the_example_config_is_valid() -> None:
    env = {"FRONTIER_API_KEY": "k", "SUPPORT_BOT_KEY": "s", "ANTHROPIC_KEY_1": "a1", "ANTHROPIC_KEY_2": "a2"}
    config = load_config(EXAMPLE, env=env)
    assert [b.name for b in config.backends] == ["local-9b", "frontier", "claude"]
    assert config.server.host == "127.0.0.1"


def test_the_example_config_shows_every_top_level_and_server_option() -> None:
    tree = yaml.safe_load(EXAMPLE.read_text())
    assert set(tree) == _documented_keys(Config)
    assert set(tree["server"]) == _documented_keys(ServerConfig)


def test_the_demo_config_is_valid_without_any_environment() -> None:
    config = load_config(DEMO, env={})
    assert config.default_tier == "cheap"
