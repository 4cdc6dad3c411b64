"""The experiment format, written out from spec.py: the JSON schema (workflow/schemas/, used by
the workflow and by editors) and a Markdown reference of every key (docs/experiment.md).

Both are generated, never edited by hand (`make schema`), and tests/test_reference.py fails when
either is stale or a key has no description, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import json

from tunebench.spec import Experiment

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema() -> dict:
    return {"$schema": SCHEMA_DIALECT, **Experiment.model_json_schema()}


def json_schema() -> str:
    return json.dumps(schema(), indent=2) + "\n"


def _ref_name(node: dict) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _type(node: dict) -> str:
    """A short human reading of a property's schema: `int > 0`, `list of str`, `a | b`."""
    if "$ref" in node:
        return f"[{_ref_name(node)}](#{_ref_name(node).lower()})"
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "anyOf" in node or "oneOf" in node:
        options = node.get("anyOf") or node["oneOf"]
        return " \\| ".join(_type(option) for option in options)
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object":
        values = node.get("additionalProperties")
        return f"map of {_type(values)}" if isinstance(values, dict) and values else "map"
    bounds = []
    for key, symbol in (
        ("exclusiveMinimum", ">"),
        ("minimum", ">="),
        ("exclusiveMaximum", "<"),
        ("maximum", "<="),
    ):
        if key in node:
            bounds.append(f"{symbol} {node[key]}")
    names = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}
    return " ".join([names.get(kind, kind), *bounds])


def _default(node: dict) -> str:
    if "default" not in node:
        return "required"
    if isinstance(node["default"], dict) and node["default"]:
        return "its own defaults"  # a section of its own lists them
    return f"`{json.dumps(node['default'], separators=(', ', ': '))}`"


def sections() -> list[tuple[str, dict, list[str]]]:
    """(definition name, its schema, key paths where it is used) in the order a reader meets
    them, starting from the top level."""
    root = schema()
    definitions = root["$defs"]
    order: list[str] = ["Experiment"]
    paths: dict[str, list[str]] = {"Experiment": ["(top level)"]}

    def visit(node: dict, path: str) -> None:
        for option in node.get("anyOf", []) + node.get("oneOf", []):
            visit(option, path)
        if "items" in node:
            visit(node["items"], f"{path}[]")
        name = _ref_name(node)
        if name:
            if name not in paths:
                order.append(name)
                paths[name] = []
                for key, child in definitions[name].get("properties", {}).items():
                    visit(child, f"{path}.{key}")
            paths[name].append(path)

    for key, child in root["properties"].items():
        visit(child, key)
    nodes = {"Experiment": root, **definitions}
    return [(name, nodes[name], paths[name]) for name in order]


def undocumented() -> list[str]:
    """Key paths whose property has no description."""
    missing = []
    for name, node, paths in sections():
        for key, child in node.get("properties", {}).items():
            if not child.get("description"):
                missing.append(f"{paths[0]}.{key} ({name})")
    return missing


def markdown() -> str:
    lines = [
        "# The experiment file: every key",
        "",
        "Generated from `src/tunebench/spec.py` by `make schema` (do not edit).",
        "[The experiment file, commented](experiment-file.md) has an example of every section;",
        "`tunebench schema` prints the JSON schema. Unknown keys are errors.",
        'An "axis" takes one value or a list; each value is one run of the matrix.',
    ]
    for name, node, paths in sections():
        lines += ["", f"## {name}", ""]
        where = ", ".join(f"`{p}`" for p in paths)
        lines += [f"{node.get('description', '').strip()} Used at: {where}.", ""]
        lines += ["| key | type | default | what it does |", "|---|---|---|---|"]
        for key, child in node.get("properties", {}).items():
            text = child.get("description", "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{key}` | {_type(child)} | {_default(child)} | {text} |")
    return "\n".join(lines) + "\n"
