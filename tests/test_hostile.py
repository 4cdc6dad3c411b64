"""Hostile inputs: every malformed experiment file and dataset in tests/hostile/ is rejected
with a message naming the key path or file:line, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.cli import main
from tunebench.data.prepare import DataError, prepare
from tunebench.spec import DatasetSpec

HOSTILE = Path(__file__).parent / "hostile"
EXPERIMENTS = sorted((HOSTILE / "experiments").glob("*.yaml"))
# Files that cannot carry a "# expect:" comment.
EXPECTED_WITHOUT_COMMENT = {
    "empty.yaml": "expected a mapping of settings, got NoneType",
    "not_utf8.yaml": "not valid UTF-8",
}
DATA = json.loads((HOSTILE / "data" / "expected.json").read_text())


def expected_message(path: Path) -> str:
    if path.name in EXPECTED_WITHOUT_COMMENT:
        return EXPECTED_WITHOUT_COMMENT[path.name]
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its expectation"
    return first.removeprefix("# expect: ")


def test_the_corpora_are_large_enough():
    assert len(EXPERIMENTS) >= 30
    assert len(DATA) >= 15


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_hostile_experiment_is_rejected(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected_message(path) in err, err
    # `run` refuses before Snakemake starts, so nothing appears under results/.
    assert main(["run", str(path)]) == 2
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / ".snakemake").exists()


@pytest.mark.parametrize("name", sorted(DATA))
def test_hostile_data_is_rejected_with_file_and_line(name, tmp_path):
    case = DATA[name]
    spec = DatasetSpec(name="h", path=str(HOSTILE / "data" / name), format=case["format"])
    with pytest.raises(DataError) as info:
        prepare(spec, tmp_path / "out")
    assert case["error"] in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("name", sorted(n for n, c in DATA.items() if c["row_level"]))
def test_bad_rows_can_be_skipped_and_are_counted(name, tmp_path):
    case = DATA[name]
    spec = DatasetSpec(
        name="h",
        path=str(HOSTILE / "data" / name),
        format=case["format"],
        bad_rows="skip",
        test_size=1,
        validation_size=0,
    )
    manifest = prepare(spec, tmp_path / "out")
    assert manifest["counts"]["skipped_bad_rows"] == 1
    assert case["error"].split(":")[0] in manifest["bad_rows"][0]
    assert (tmp_path / "out" / "train.jsonl").is_file()
