"""The README's dataset examples are real: every row parses as the format it illustrates."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO

from tunebench.data.formats import FORMATS, detect_format, normalise

EXAMPLE = re.compile(r"^`(\w+)`[^\n]*:\n```json\n(.*?)```", re.M | re.S)


def readme_examples() -> dict[str, list[dict]]:
    text = (REPO / "README.md").read_text()
    return {
        fmt: [json.loads(line) for line in block.splitlines() if line.strip()]
        for fmt, block in EXAMPLE.findall(text)
    }


def test_every_format_has_a_three_row_example():
    assert set(readme_examples()) == set(FORMATS)
    assert all(len(rows) == 3 for rows in readme_examples().values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_readme_rows_parse_as_their_format(fmt):
    for i, row in enumerate(readme_examples()[fmt], 1):
        assert detect_format(row, None, f"README {fmt} row {i}") == fmt
        example = normalise(row, fmt, None, f"README {fmt} row {i}")
        assert example.get("messages") or example.get("text")
