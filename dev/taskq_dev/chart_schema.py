"""Generate the Helm chart's `values.schema.json` from its annotated `values.yaml`.

`values.yaml` is the single source of truth: each value's type comes from its default, its
description from the `# -- text` comment above it, and extra JSON-schema keywords from an optional
`# @schema {json}` line. Every object gets `additionalProperties: false` (unknown values are
rejected) unless its annotation says otherwise, in which case it is a free-form map.

Run by `make chart-schema` (`python -m taskq_dev.chart_schema`); `tests/chart/` fails when the
committed schema is stale or a value has no description.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "taskq"

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_-]*):(?:\s|$)")
_DESCRIPTION = re.compile(r"^ *# -- ?(?P<text>.*)$")
_CONTINUATION = re.compile(r"^ *# {2,}(?P<text>\S.*)$")
_SCHEMA = re.compile(r"^ *# @schema (?P<json>\{.*\})\s*$")


class ChartSchemaError(ValueError):
    """values.yaml cannot be turned into a schema; the message names the line or the value."""


@dataclass
class Annotation:
    """What the comments above one key say about it."""

    description: str = ""
    schema: dict[str, Any] = field(default_factory=dict)


def read_annotations(values_text: str) -> dict[tuple[str, ...], Annotation]:
    """Map each key path (`("image", "tag")`) to the description and schema comments above it."""
    annotations: dict[tuple[str, ...], Annotation] = {}
    stack: list[tuple[int, str]] = []
    pending = Annotation()
    in_description = False
    for number, line in enumerate(values_text.splitlines(), start=1):
        if match := _DESCRIPTION.match(line):
            pending.description = match["text"].strip()
            in_description = True
            continue
        if in_description and (match := _CONTINUATION.match(line)):
            pending.description += " " + match["text"].strip()
            continue
        if match := _SCHEMA.match(line):
            try:
                pending.schema.update(json.loads(match["json"]))
            except json.JSONDecodeError as exc:
                raise ChartSchemaError(f"values.yaml line {number}: bad @schema JSON: {exc}") from None
            in_description = False
            continue
        in_description = False
        if match := _KEY_LINE.match(line):
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            annotations[tuple(key for _, key in stack)] = pending
            pending = Annotation()
        elif line.strip() and not line.lstrip().startswith("#") and not line.lstrip().startswith("-"):
            raise ChartSchemaError(f"values.yaml line {number}: cannot read {line.strip()!r}")
        elif not line.strip():
            pending = Annotation()
    return annotations


def _type_of(value: Any, path: tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise ChartSchemaError(f"{'.'.join(path)}: give it a typed default (null needs an explicit @schema type)")


def _node(value: Any, path: tuple[str, ...], annotations: dict[tuple[str, ...], Annotation]) -> dict[str, Any]:
    annotation = annotations.get(path, Annotation())
    if path and not annotation.description:
        raise ChartSchemaError(f"{'.'.join(path)}: every value needs a `# -- description` comment")
    node: dict[str, Any] = {}
    if annotation.description:
        node["description"] = annotation.description
    if "type" not in annotation.schema:
        node["type"] = _type_of(value, path)
    if isinstance(value, dict) and "additionalProperties" not in annotation.schema:
        node["additionalProperties"] = False
        node["properties"] = {key: _node(child, (*path, str(key)), annotations) for key, child in value.items()}
    node.update(annotation.schema)
    return node


def generate(values_path: Path) -> dict[str, Any]:
    """The JSON schema for the chart whose annotated values file is `values_path`."""
    text = values_path.read_text()
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ChartSchemaError(f"{values_path} must hold a mapping")
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the taskq Helm chart (generated from values.yaml by `make chart-schema`)",
    }
    schema.update(_node(values, (), read_annotations(text)))
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART_DIR, help="chart folder (default: charts/taskq)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed schema is stale")
    args = parser.parse_args(argv)
    target = args.chart / "values.schema.json"
    wanted = render(generate(args.chart / "values.yaml"))
    if args.check:
        if not target.exists() or target.read_text() != wanted:
            print(f"{target} is stale: run `make chart-schema`", file=sys.stderr)
            return 1
        return 0
    target.write_text(wanted)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
