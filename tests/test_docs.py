"""The documentation stands: the site builds with `mkdocs build --strict`, the README stays a
front door, no tracked file names a path outside the repository, and every table of measured
figures in README.md and docs/ agrees with its file under benchmarks/figures/.

A figure table carries `<!-- figure: benchmarks/figures/NAME.md[, ...] -->` on the line above it
(blank lines between are fine). Every number in each of its rows must be found in one row of
those files, to the precision the page shows; every line of a marked code block must be a line
of them. Any other table with a decimal or a percentage needs `<!-- figure: none, WHY -->`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO

FIGURES = REPO / "benchmarks" / "figures"
# Pages whose tables are checked: the README and every docs page but the generated reference
# of every key and the two pages that only include files kept elsewhere.
NOT_CHECKED = {"experiment.md", "figures.md", "contributing.md"}
PAGES = [
    REPO / "README.md",
    *(p for p in sorted((REPO / "docs").glob("*.md")) if p.name not in NOT_CHECKED),
]

MARKER = re.compile(r"^<!--\s*figure:\s*(.*?)\s*-->\s*$")
# A number standing on its own: not part of a word, a version (2.13.0), an id (q8_0, r16) or a
# hyphenated name (a run id's hash, s0-30e27131, would read as 30 x 10^27131).
NUMBER = re.compile(
    r"(?<![\w.-])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?%?(?![\w.])"
)
MEASURED_LOOKING = re.compile(r"^[-+]?[\d,]*\.\d|%$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based, the block's first line
    kind: str  # "table" or "code"
    lines: list[str]
    marker: str | None


def blocks(page: Path) -> list[Block]:
    """Tables and fenced code blocks of a page, each with the figure marker above it, if any."""
    lines = page.read_text().splitlines()
    found, marker, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        if m := MARKER.match(line.strip()):
            if marker is not None:
                raise AssertionError(f"{page.name}:{i + 1}: a figure marker with no table below")
            marker, i = m.group(1), i + 1
            continue
        if line.lstrip().startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```"))
            found.append(Block(page, i + 1, "code", lines[i + 1 : end], marker))
            marker, i = None, end + 1
            continue
        if line.startswith("|"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            found.append(Block(page, i + 1, "table", lines[i:end], marker))
            marker, i = None, end
            continue
        if line.strip() and marker is not None:
            raise AssertionError(f"{page.name}:{i + 1}: a figure marker must stand above a table")
        i += 1
    assert marker is None, f"{page.name}: a figure marker at the end, with no table below"
    return found


def cells(row: str) -> list[str]:
    return [c.strip().replace("**", "") for c in row.strip().strip("|").split("|")]


def value(token: str) -> tuple[float, float]:
    """A number as written, and half a unit of its last digit: what rounding may have moved."""
    text = token.rstrip("%").replace(",", "")
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return float(text), 0.5 * 10 ** (-decimals + (int(exponent) if exponent else 0))


def same(shown: str, source: str) -> bool:
    """`shown` on the page is `source` from the figure file, rounded as the page rounds it."""
    (a, half), (b, _) = value(shown), value(source)
    return shown.endswith("%") == source.endswith("%") and abs(a - b) <= half * (1 + 1e-9)


def figure_files(marker: str, where: str) -> list[Path]:
    files = [REPO / name.strip() for name in marker.split(",")]
    for path in files:
        assert path.parent == FIGURES and path.is_file(), f"{where}: no figure file {path}"
    return files


def disagreements(block: Block, files: list[Path] | None = None) -> list[str]:
    """Rows (or lines) of a marked block that its figure files do not hold."""
    where = f"{block.page.name}:{block.line}"
    files = files or figure_files(block.marker, where)
    source = [line for path in files for line in path.read_text().splitlines()]
    if block.kind == "code":
        held = {line.strip() for line in source}
        return [f"{where}: {line!r}" for line in block.lines if line.strip() not in held]
    source_rows = [NUMBER.findall(" ".join(cells(r))) for r in source if r.startswith("|")]
    wrong = []
    for row in block.lines[2:]:  # the header and its rule carry no figures
        shown = [t for c in cells(row)[1:] for t in NUMBER.findall(c)]
        if shown and not any(
            all(any(same(t, s) for s in src) for t in shown) for src in source_rows
        ):
            wrong.append(f"{where}: {row}")
    return wrong


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def test_site_builds_strict(tmp_path):
    """Every page in the nav, every link and anchor resolves, every included file exists."""
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move reference text to docs/"


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md"])
def test_relative_links_resolve(name):
    """README and CONTRIBUTING are outside the site: their links are checked here."""
    text = (REPO / name).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), f"{name} links to {target}, which does not exist"


def test_every_figure_table_matches_its_file():
    wrong = [
        w
        for b in all_blocks()
        if b.marker and not b.marker.startswith("none")
        for w in disagreements(b)
    ]
    assert not wrong, "rows not in their figure file:\n" + "\n".join(wrong)


def test_every_table_of_figures_names_its_file():
    """A table with decimals or percentages is either marked with its figure file or says why
    its numbers are not measurements."""
    unmarked = []
    for b in all_blocks():
        if b.kind != "table" or b.marker:
            continue
        numbers = [t for row in b.lines[2:] for c in cells(row)[1:] for t in NUMBER.findall(c)]
        if any(MEASURED_LOOKING.search(t) for t in numbers):
            unmarked.append(f"{b.page.name}:{b.line}: {b.lines[0]}")
    assert not unmarked, "tables of figures without a figure marker:\n" + "\n".join(unmarked)


def test_markers_that_name_no_file_say_why():
    for b in all_blocks():
        if b.marker and b.marker.startswith("none"):
            assert len(b.marker.split()) >= 3, f"{b.page.name}:{b.line}: say why: {b.marker!r}"


def test_the_check_catches_a_changed_figure(tmp_path):
    """A figure that moves, in its file or on the page, beyond the page's rounding fails."""
    figure = tmp_path / "figure.md"
    figure.write_text(
        "| run | loss | share | steps |\n|---|---|---|---|\n| a | 1.23456 | 12.5% | 1,024 |\n"
    )
    table = "| run | loss | share | steps |\n|---|---|---|---|\n| a | {} | 12.5% | 1,024 |"

    def check(loss: str) -> list[str]:
        block = Block(tmp_path / "page.md", 1, "table", table.format(loss).splitlines(), "x")
        return disagreements(block, [figure])

    assert check("1.235") == [] and check("1.2") == [] and check("1.23456") == []
    assert check("1.236") and check("1.24") and check("12.5")
    assert same("9.7e-8", "9.68575e-08") and not same("12.5", "12.5%")
    code = Block(tmp_path / "page.md", 1, "code", ["| a | 1.23456 | 12.5% | 1,024 |"], "x")
    assert disagreements(code, [figure]) == []
    code.lines = ["| a | 1.23457 | 12.5% | 1,024 |"]
    assert disagreements(code, [figure])


def test_figure_files_state_machine_and_date():
    """Each file says where and when it was measured (benchmark scripts stamp both:
    tunebench.measure.measured_on)."""
    for path in sorted(FIGURES.glob("*.md")):
        text = path.read_text()
        assert re.search(r"(?i)machine|\bon vm\b|H200", text), f"{path.name}: no machine"
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{path.name}: no date"


def test_figures_page_includes_every_figure_file():
    page = (REPO / "docs" / "figures.md").read_text()
    included = set(re.findall(r'--8<-- "benchmarks/figures/([^"]+)"', page))
    assert included == {p.name for p in FIGURES.glob("*.md")}


def test_no_tracked_file_names_a_path_outside_the_repository():
    """The project stands alone: no page, comment or preset points at a file outside it (a
    container's own /work, as a mount target, is inside the image)."""
    # Spelled in pieces so that this file does not name them itself.
    notes, shared = "NOTES" + r"\.md", "sha" + "red"
    outside = re.compile(rf"{notes}|{shared}/reference|\.\./{shared}|(?<!:)/work/")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    found = []
    for name in tracked:
        path = REPO / name
        if not name or name.startswith(".ci/") or path == Path(__file__) or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if outside.search(line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_license_is_the_one_pyproject_names():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()


def test_the_module_map_names_every_module():
    contributing = (REPO / "CONTRIBUTING.md").read_text()
    package = REPO / "src" / "tunebench"
    modules = [
        p.relative_to(package).as_posix()
        for p in sorted(package.rglob("*.py"))
        if p.name != "__init__.py" or p.parent.name == "estimate"
    ]
    missing = [m for m in modules if f"| `{m}` |" not in contributing]
    assert not missing, f"CONTRIBUTING.md's module map lacks {missing}"


def commented_example() -> dict:
    text = (REPO / "docs" / "experiment-file.md").read_text()
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))


def test_the_commented_example_is_a_valid_experiment():
    from tunebench.experiment import validate_data

    schema = json.loads((REPO / "workflow" / "schemas" / "experiment.schema.json").read_text())
    example = commented_example()
    jsonschema.validate(example, schema)
    validate_data(example, "docs/experiment-file.md example")
    assert set(example) == set(schema["properties"]), "the example shows every section"
