"""The command line of each stage is derived from its signature (stages.add_parsers): what a
rule writes must parse to the parameter's type."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tunebench import stages


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser()
    stages.add_parsers(root.add_subparsers(dest="command"))
    return root


@pytest.mark.parametrize(("written", "value"), [("True", True), ("false", False)])
def test_a_bool_as_a_rule_writes_it(parser, written, value):
    args = parser.parse_args(
        ["stage", "export", "--run-dir", "r", "--out", "o", "--work", "w", "--check", written]
    )
    assert args.check is value and args.run_dir == Path("r") and args.gguf_types == "f16,q8_0"


def test_a_bool_that_is_neither_is_refused(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["stage", "export", "--run-dir", "r", "--out", "o", "--work", "w", "--check", "maybe"]
        )
    assert "--check" in capsys.readouterr().err


def test_training_asks_cuda_for_expandable_segments_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv(stages.CUDA_ALLOC_CONF, raising=False)
    assert stages.cuda_allocator() == "expandable_segments:True"
    monkeypatch.setenv(stages.CUDA_ALLOC_CONF, "garbage_collection_threshold:0.6")
    assert stages.cuda_allocator() == "garbage_collection_threshold:0.6"
