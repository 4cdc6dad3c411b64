"""Reading raw records from local files and the Hugging Face hub.

Every record comes with a location ("where") so that a later error can name the file and line
(or hub split and row) that caused it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")

Located = list[tuple[str, dict]]

HUB_HINT = (
    "check the dataset id, config and split; with HF_HUB_OFFLINE=1 the dataset must already be "
    "in the local cache, and gated or private datasets need HF_TOKEN"
)
LOCAL_HINT = "check the split name and that every file of the local dataset has the same columns"


class DataError(ValueError):
    """A bad input file or row; the message names file and line."""


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def read_file(path: Path, errors: list[str] | None = None) -> Located:
    """[(where, record)] for every record in a local file.

    Row-level problems (a bad JSON line, a non-object, a CSV row with the wrong field count)
    raise DataError, unless `errors` is given: then their messages are appended to it and the
    row is skipped (datasets[].bad_rows: skip). File-level problems always raise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if suffix == ".parquet":
        records = _read_parquet(path)
    else:
        data = path.read_bytes()
        if suffix == ".jsonl" and errors is not None:
            text = _decode_skipping_lines(path, data, errors)
        else:
            text = _decode(path, data)
        if suffix == ".jsonl":
            records = _read_jsonl(path, text, errors)
        elif suffix == ".json":
            records = _read_json(path, text, errors)
        else:
            records = _read_delimited(path, text, "\t" if suffix == ".tsv" else ",", errors)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _decode(path: Path, data: bytes) -> str:
    # A BOM is common in files saved by spreadsheet programs; it is not part of the data.
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from err


def _decode_skipping_lines(path: Path, data: bytes, errors: list[str]) -> str:
    """JSON Lines with bad_rows: skip: a line that is not UTF-8 is one bad row, blanked so the
    other lines keep their numbers."""
    lines = data.removeprefix(codecs.BOM_UTF8).split(b"\n")
    decoded = []
    for lineno, line in enumerate(lines, 1):
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            errors.append(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})")
            decoded.append("")
    return "\n".join(decoded)


def _row_error(message: str, errors: list[str] | None) -> None:
    if errors is None:
        raise DataError(message)
    errors.append(message)


def _object(value: object, where: str, errors: list[str] | None) -> dict | None:
    if isinstance(value, dict):
        return value
    _row_error(f"{where}: expected a JSON object, got {_type_name(value)}", errors)
    return None


def _read_jsonl(path: Path, text: str, errors: list[str] | None) -> Located:
    records = []
    # split("\n"), not splitlines(): U+2028 and friends may legally appear inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            _row_error(f"{where}: invalid JSON ({err.msg})", errors)
            continue
        record = _object(value, where, errors)
        if record is not None:
            records.append((where, record))
    return records


def _read_json(path: Path, text: str, errors: list[str] | None) -> Located:
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines saved with a .json name: common on the hub
            return _read_jsonl(path, text, errors)
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(value, list):
        raise DataError(
            f"{path}: expected a JSON array of objects (or JSON Lines), got {_type_name(value)}"
        )
    records = []
    for n, item in enumerate(value, 1):
        where = f"{path}:row {n}"
        record = _object(item, where, errors)
        if record is not None:
            records.append((where, record))
    return records


def _read_delimited(path: Path, text: str, delimiter: str, errors: list[str] | None) -> Located:
    # csv.reader rather than DictReader: it lets us track the line a (possibly multi-line)
    # row starts on and reject rows whose field count differs from the header's.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return []
        _check_header(path, header)
        records = []
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                _row_error(f"{where}: expected {len(header)} fields, got {len(row)}", errors)
                continue
            records.append((where, dict(zip(header, row, strict=True))))
        return records
    except csv.Error as err:
        raise DataError(
            f"{path}:{reader.line_num}: malformed {delimiter!r}-separated row ({err})"
        ) from err


def _check_header(path: Path, header: list[str]) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}:1: duplicate column {name!r} in the header")
        seen.add(name)


def _read_parquet(path: Path) -> Located:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read Parquet file ({_first_line(err)})") from err
    return [(f"{path}:row {n}", row) for n, row in enumerate(rows, 1)]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _hub_error(dataset_id: str, what: str, err: Exception) -> DataError:
    reason = f"{type(err).__name__}: {_first_line(err)}"
    # datasets often wraps the informative error ("Couldn't cast ...") in a generic one.
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not err:
        reason += f"; caused by {type(root).__name__}: {_first_line(root)}"
    hint = LOCAL_HINT if Path(dataset_id).exists() else HUB_HINT
    return DataError(f"{dataset_id}: cannot {what} ({reason}); {hint}")


def read_hub(dataset_id: str, config: str | None, split: str, revision: str | None) -> Located:
    """[(where, record)] for one split of a hub dataset (or a local dataset directory)."""
    import tempfile

    import datasets  # slow to import; only hub datasets need it

    # A local folder gets a cache of its own for this one read: datasets 5.2 keys the cache of a
    # local folder by its base name and card, so two folders named alike (or one edited since)
    # can silently return the other's rows (seen with two "gsm8k" folders).
    with tempfile.TemporaryDirectory(prefix="tunebench-local-dataset-") as fresh_cache:
        cache_dir = fresh_cache if Path(dataset_id).is_dir() else None
        try:
            dataset = datasets.load_dataset(
                dataset_id, config, split=split, revision=revision, cache_dir=cache_dir
            )
        except Exception as err:  # offline, missing, gated, unknown split...: all user-fixable
            raise _hub_error(dataset_id, f"load split {split!r}", err) from err
        records = [(f"{dataset_id}[{split}]:row {n}", row) for n, row in enumerate(dataset, 1)]
    if not records:
        raise DataError(f"{dataset_id}[{split}]: no records")
    return records


def hub_splits(dataset_id: str, config: str | None, revision: str | None) -> list[str]:
    """The dataset's own split names, e.g. ["train", "validation", "test"]."""
    import datasets

    try:
        return list(datasets.get_dataset_split_names(dataset_id, config, revision=revision))
    except Exception as err:
        raise _hub_error(dataset_id, "list splits", err) from err
