"""Labelled requests from JSON Lines, for ``tiermux train`` and ``tiermux eval``.

One object a line with a ``label`` (one of the categories) and the request in any of three forms:
``"prompt": "..."`` (one user message), ``"messages": [...]``, or ``"request": {...}`` (a whole
chat-completions body: messages, tools, response_format, max_tokens...). ``id`` is optional.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from tiermux.routing.categories import CATEGORIES
from tiermux.routing.request import RequestText, chat_from_object, from_prompt

__all__ = ["DatasetError", "Example", "load_examples", "split_holdout"]


class DatasetError(ValueError):
    """A data file that can't be read; the message names the file and the line."""


class Example:
    __slots__ = ("id", "label", "request")

    def __init__(self, id: str, label: str, request: RequestText) -> None:
        self.id = id
        self.label = label
        self.request = request

    def __repr__(self) -> str:
        return f"<Example {self.id} {self.label}>"


def _request_of(row: dict[str, Any]) -> RequestText:
    if "request" in row:
        return chat_from_object(row["request"])
    if "messages" in row:
        return chat_from_object({"messages": row["messages"]})
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise TypeError("`prompt` must be a string")
        return from_prompt(row["prompt"])
    raise KeyError("one of `prompt`, `messages` or `request` is needed")


def _read(path: Path) -> Iterator[Example]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # "\n" only: str.splitlines would also split at U+2028, which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
            label = row["label"]
            if label not in CATEGORIES:
                raise ValueError(f"unknown label {label!r}; expected one of {', '.join(CATEGORIES)}")
            request = _request_of(row)
        except (ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
            raise DatasetError(f"{where}: {exc}") from None
        yield Example(str(row.get("id", where)), label, request)


def load_examples(paths: Iterable[str | Path]) -> list[Example]:
    examples: list[Example] = []
    for path in paths:
        try:
            examples.extend(_read(Path(path)))
        except OSError as exc:
            raise DatasetError(f"{path}: {exc.strerror or exc}") from None
    return examples


def split_holdout(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A stratified split: about ``share`` of each label held out, the same for the same seed."""
    import random

    rng = random.Random(seed)
    train: list[Example] = []
    held: list[Example] = []
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        cut = round(len(group) * share)
        held.extend(group[:cut])
        train.extend(group[cut:])
    return train, held
