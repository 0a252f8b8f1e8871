"""Fixtures for the microbenchmarks: a realistic request body, and both twins of each compiled module.

Run with ``make bench-micro`` (``pytest bench/micro --benchmark-only``). Compiled and pure-Python
twins share a benchmark group, so pytest-benchmark prints them next to each other; the compiled
ones are skipped when the extensions were not built.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest


def chat_body() -> bytes:
    """A multi-turn chat completion of about 2,000 bytes, with ``model`` after the messages.

    The scanner has to cross every message (escaped quotes, unicode, nested objects) before it
    reaches ``model``, and it walks the remaining members too (with duplicates the last one wins).
    """
    turns = [
        (
            "system",
            'You are a careful assistant for "Northwind Books". Answer in plain English, '
            "quote order numbers exactly, and never promise delivery dates you cannot see.",
        ),
        (
            "user",
            'Hi! I ordered two books last week (order #48213): "The Dispossessed" and '
            "\"A Wizard of Earthsea\". The tracking page still says 'label created'.",
        ),
        (
            "assistant",
            "Thanks for the details. 'Label created' means the carrier has the parcel's "
            "data but has not scanned it yet; that usually changes within 48 hours.",
        ),
        (
            "user",
            "It has been five days though. Also, can I add a gift note to the second book? "
            "Something like: “Happy birthday, Ana — see you in Lisbon!”",
        ),
        (
            "assistant",
            "Five days is longer than usual, so I have flagged the order for the "
            "warehouse team. Gift notes can only be added before dispatch, sorry.",
        ),
        (
            "user",
            "Fine. One more thing: the invoice shows €38.40 but the basket said €36.90 — was the "
            "difference shipping? I chose the free option (3 to 5 working days), as far as I remember.",
        ),
        (
            "assistant",
            "The €1.50 difference is the gift-wrap charge on the second book; shipping was free. I "
            "can refund it now if you no longer want gift wrapping, since the note can't be added.",
        ),
        (
            "user",
            "Yes, please refund it.\nAnd for the record, the delivery address is: Rua das Flores "
            '12, 3º esq., 1200-195 Lisboa. Is that what you have on file? {"confirm": true}',
        ),
        (
            "assistant",
            "Done: €1.50 will be back on your card within 3 to 5 working days. The address on file "
            "matches, including the floor and side (3º esq.).",
        ),
        (
            "user",
            "OK. Please summarise what happens next, in two short bullet points, and tell me "
            "whether I should contact the carrier myself or wait for your warehouse team.",
        ),
    ]
    body = {
        "messages": [{"role": role, "content": content} for role, content in turns],
        "temperature": 0.2,
        "max_tokens": 256,
        "stop": ["\n\n\n"],
        "user": "customer-7731",
        "metadata": {"session": "b6c1f0de-77a4-4a8e-9d55-1f2e6c0b9a10", "channel": "web-chat"},
        "model": "auto",
        "stream": False,
    }
    return json.dumps(body, ensure_ascii=False).encode()


@pytest.fixture(scope="session")
def body() -> bytes:
    data = chat_body()
    assert 1_800 <= len(data) <= 2_300, len(data)
    return data


DEMO_CONFIG = Path(__file__).resolve().parents[2] / "src" / "tiermux" / "examples" / "demo.yaml"


def twin(name: str, kind: str) -> ModuleType:
    """``tiermux._ext.NAME`` (skipping when not built) or ``tiermux._pure.NAME``."""
    return _compiled(name) if kind == "compiled" else _pure(name)


def _compiled(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"tiermux._ext.{name}")
    except ImportError:
        pytest.skip(f"tiermux._ext.{name} is not built (make build)")


def _pure(name: str) -> ModuleType:
    return importlib.import_module(f"tiermux._pure.{name}")


@pytest.fixture(params=["compiled", "pure"], scope="session")
def jsonscan(request: pytest.FixtureRequest) -> ModuleType:
    """``tiermux._ext.jsonscan`` and ``tiermux._pure.jsonscan``, one test each."""
    return _compiled("jsonscan") if request.param == "compiled" else _pure("jsonscan")
