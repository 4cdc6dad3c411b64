"""The dataset format examples in the docs are real: every row parses as the format it
illustrates (docs/datasets.md, "Formats")."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO

from tunebench.data.formats import FORMATS, detect_format, normalise

PAGE = REPO / "docs" / "datasets.md"
EXAMPLE = re.compile(r"^`(\w+)`[^\n]*:\n\n?```json\n(.*?)```", re.M | re.S)


def page_examples() -> dict[str, list[dict]]:
    text = PAGE.read_text()
    return {
        fmt: [json.loads(line) for line in block.splitlines() if line.strip()]
        for fmt, block in EXAMPLE.findall(text)
    }


def test_every_format_has_a_three_row_example():
    assert set(page_examples()) == set(FORMATS)
    assert all(len(rows) == 3 for rows in page_examples().values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_page_rows_parse_as_their_format(fmt):
    for i, row in enumerate(page_examples()[fmt], 1):
        where = f"{PAGE.name} {fmt} row {i}"
        assert detect_format(row, None, where) == fmt
        example = normalise(row, fmt, None, where)
        assert example.get("messages") or example.get("text")
