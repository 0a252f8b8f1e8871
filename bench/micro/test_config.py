"""Loading the bundled demo config: a cold path (start-up, reload), measured for information only."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import pytest

from tiermux.config import load_config


@pytest.mark.benchmark(group="config: load the demo config (cold path)")
def test_load_demo_config(benchmark: Any) -> None:
    path = str(files("tiermux") / "examples" / "demo.yaml")
    config = benchmark(load_config, path, {})
    assert config.backends
