"""Atomic writes: whole files or none, with the mode an ordinary open() gives (0666 less the
umask): results in a shared project folder are readable by the group, not 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tunebench.io import atomic_dir, atomic_path, current_umask, write_json, write_jsonl


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    before = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)],
)
def test_files_and_folders_get_the_mode_open_and_mkdir_would(
    tmp_path, umask, mask, file_mode, dir_mode
):
    umask(mask)
    assert current_umask() == mask
    write_json(tmp_path / "result.json", {"status": "ok"})
    write_jsonl(tmp_path / "samples.jsonl", [{"a": 1}])
    with atomic_path(tmp_path / "table.csv") as tmp:
        tmp.write_text("a,b\n")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary open() gives
        f.write("x")
    assert mode(tmp_path / "plain.txt") == file_mode
    for name in ("result.json", "samples.jsonl", "table.csv", "model/config.json"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "model") == dir_mode


def test_a_failed_block_leaves_no_file_and_keeps_the_old_one(tmp_path):
    write_json(tmp_path / "result.json", {"status": "ok"})
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "result.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "result.json").read_text().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
