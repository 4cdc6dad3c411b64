"""The experiment format documents itself: every key has a description, the JSON schema and
docs/experiment.md are generated from spec.py and current, and what users write (the README's
small example, every shipped experiment) passes the schema the workflow checks it with
(docs/experiment-file.md's commented example is checked in test_docs)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml
from conftest import REPO, tiny_experiment

from tunebench import reference
from tunebench.experiment import validate_data

SCHEMA = json.loads((REPO / "workflow" / "schemas" / "experiment.schema.json").read_text())


def test_every_key_has_a_description():
    assert reference.undocumented() == []
    assert sum(len(node.get("properties", {})) for _, node, _ in reference.sections()) > 130


def test_generated_files_are_current():
    """Regenerate with `make schema`."""
    assert (REPO / "workflow" / "schemas" / "experiment.schema.json").read_text() == (
        reference.json_schema()
    )
    assert (REPO / "docs" / "experiment.md").read_text() == reference.markdown()


def readme_example() -> dict:
    text = (REPO / "README.md").read_text()
    section = text.split("## The experiment file", 1)[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def test_the_readme_example_is_a_valid_experiment():
    example = readme_example()
    jsonschema.validate(example, SCHEMA)
    exp = validate_data(example, "README example")
    assert {m.method for m in exp.methods} == {"full", "lora", "qlora"}


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments").rglob("*.yaml")), ids=lambda p: p.name
)
def test_what_users_write_passes_the_schema(path):
    """The workflow validates the file as written (scalars for one-value axes included)."""
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)


def test_one_value_axes_pass_the_schema_and_become_lists():
    exp = tiny_experiment()
    exp["methods"][1] |= {"ranks": 8, "alpha_ratio": 2}
    exp["training"]["seeds"] = 3
    jsonschema.validate(exp, SCHEMA)
    parsed = validate_data(exp)
    assert parsed.methods[1].ranks == [8] and parsed.training.seeds == [3]


def test_the_schema_rejects_unknown_keys_like_the_model():
    good = tiny_experiment()
    jsonschema.validate(good, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "surprise": 1}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "training": {**good["training"], "batchsize": 4}}, SCHEMA)
