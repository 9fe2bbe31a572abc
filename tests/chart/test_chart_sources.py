"""Generated chart files stay in step with their sources: the values schema and the CRD copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taskq_dev import chart_schema

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskq"


def test_values_schema_is_generated_from_values_yaml() -> None:
    committed = (CHART / "values.schema.json").read_text()
    assert committed == chart_schema.render(chart_schema.generate(CHART / "values.yaml")), "run `make chart-schema`"


def test_chart_crd_is_identical_to_the_source_of_truth() -> None:
    source = (REPO / "crds" / "taskqueue.yaml").read_bytes()
    assert (CHART / "crds" / "taskqueue.yaml").read_bytes() == source, "run `make chart-crd`"


def _objects_without_free_form_children(schema: dict) -> list[dict]:
    found = []
    if schema.get("type") == "object" and schema.get("additionalProperties") is False:
        found.append(schema)
        for child in schema.get("properties", {}).values():
            found += _objects_without_free_form_children(child)
    return found


def test_every_object_rejects_unknown_keys_and_every_value_is_described() -> None:
    schema = chart_schema.generate(CHART / "values.yaml")
    objects = _objects_without_free_form_children(schema)
    assert len(objects) >= 7
    for obj in objects:
        for name, child in obj["properties"].items():
            assert child.get("description"), f"{name} has no description"


def test_generator_refuses_an_undocumented_value(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text("# -- documented\nfirst: 1\nsecond: 2\n")
    with pytest.raises(chart_schema.ChartSchemaError, match="second: every value needs"):
        chart_schema.generate(tmp_path / "values.yaml")


def test_generator_reads_types_descriptions_and_annotations(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text(
        "# -- a group\n"
        "group:\n"
        "  # -- how many\n"
        "  #   (continued)\n"
        '  # @schema {"minimum": 1}\n'
        "  count: 3\n"
        "  # -- free-form map\n"
        '  # @schema {"additionalProperties": {"type": "string"}}\n'
        "  labels: {a: b}\n"
    )
    schema = chart_schema.generate(tmp_path / "values.yaml")
    group = schema["properties"]["group"]
    assert group["additionalProperties"] is False
    assert group["properties"]["count"] == {"description": "how many (continued)", "type": "integer", "minimum": 1}
    assert group["properties"]["labels"] == {
        "description": "free-form map", "type": "object", "additionalProperties": {"type": "string"},
    }
    assert yaml.safe_load((tmp_path / "values.yaml").read_text())["group"]["count"] == 3
