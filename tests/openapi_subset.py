"""A validator for the part of OpenAPI 3.0 Schema Objects that DigitalOcean's app-spec models use.

The models (digitalocean/openapi, `specification/resources/apps/models/`) are one YAML file per schema that
refer to each other with relative `$ref`s. This module resolves those references and checks an instance
(a parsed `.do/*.yaml`) against them, so the spec files are checked without a new dependency.

Strict where it matters for a spec file:
- an object schema without `additionalProperties` is closed: App Platform decodes the spec into typed
  messages, so an unknown (e.g. misspelt) key is an error here rather than a silently ignored setting;
- a keyword this module does not implement raises `SchemaError` instead of being ignored, so a model that
  starts using, say, `anyOf` fails loudly until the validator learns it;
- `deprecated` and `readOnly` are reported: a spec should use neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]

# Keywords that only describe; they never make an instance invalid.
ANNOTATIONS = frozenset({"title", "description", "example", "default"})
# Keywords this validator implements (besides $ref and the annotations).
ASSERTIONS = frozenset(
    {
        "type", "enum", "properties", "required", "additionalProperties", "items", "maxItems",
        "allOf", "oneOf", "nullable", "pattern", "minLength", "maxLength", "minimum", "maximum",
        "format", "deprecated", "readOnly",
    }
)  # fmt: skip
INTEGER_FORMATS = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
# Formats OpenAPI leaves to the tool; the models pair the one that matters in a spec (uri) with a pattern.
ANNOTATION_FORMATS = frozenset({"float", "double", "date-time", "email", "hostname", "uri", "uuid"})

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


class SchemaError(Exception):
    """The models use something this validator does not understand, or a `$ref` does not resolve."""


@dataclass
class Report:
    """What one validation found: errors make the instance invalid; deprecated/read-only uses are listed apart."""

    errors: list[str] = field(default_factory=list)
    deprecated: list[str] = field(default_factory=list)

    def merge(self, other: Report) -> None:
        self.errors += other.errors
        self.deprecated += other.deprecated


@dataclass(frozen=True)
class _Node:
    """A schema together with the file it was read from, which its relative `$ref`s are resolved against."""

    schema: Schema
    file: Path


class Models:
    """The model files under one folder, loaded on first use; `patches` add properties missing from a model."""

    def __init__(self, folder: Path, patches: dict[str, Schema] | None = None) -> None:
        self.folder = folder.resolve()
        self._files: dict[Path, Any] = {}
        self._patches = patches or {}

    def _load(self, path: Path) -> Any:
        path = path.resolve()
        if path not in self._files:
            if not path.is_relative_to(self.folder) or not path.is_file():
                raise SchemaError(f"$ref to {path}: not a file under {self.folder}")
            document = yaml.safe_load(path.read_text())
            extra = self._patches.get(path.relative_to(self.folder).as_posix())
            if extra:
                # A documented gap: the patch is one more allOf member, so a closed schema admits its keys.
                missing = {k: v for k, v in extra.items() if k not in _own_properties(document)}
                if missing:
                    document = {"allOf": [document, {"type": "object", "properties": missing}]}
            self._files[path] = document
        return self._files[path]

    def node(self, name: str) -> _Node:
        path = self.folder / name
        return _Node(self._load(path), path)

    def resolve(self, node: _Node) -> _Node:
        """Follow `$ref`s (`file.yml`, `file.yml#/a/b` or `#/a/b`) until a schema without one."""
        seen: set[tuple[Path, str]] = set()
        while "$ref" in node.schema:
            extra = set(node.schema) - {"$ref"} - ANNOTATIONS
            if extra:
                raise SchemaError(
                    f"keywords beside $ref in {node.file.name}: {sorted(extra)} (OpenAPI 3.0 ignores them)"
                )
            target, _, pointer = str(node.schema["$ref"]).partition("#")
            file = (node.file.parent / target).resolve() if target else node.file
            if (file, pointer) in seen:
                raise SchemaError(f"$ref cycle at {file.name}#{pointer}")
            seen.add((file, pointer))
            schema = self._load(file)
            for part in filter(None, pointer.split("/")):
                schema = schema[part.replace("~1", "/").replace("~0", "~")]
            if not isinstance(schema, dict):
                raise SchemaError(f"$ref {node.schema['$ref']} in {node.file.name} is not a schema")
            node = _Node(schema, file)
        return node

    def validate(self, instance: Any, root: str = "app_spec.yml") -> Report:
        return self._check(instance, self.node(root), "$", closed=True)

    def reachable(self, root: str = "app_spec.yml") -> int:
        """Visit every schema reachable from `root`; raise SchemaError on anything unsupported. Returns the count.

        Validating an instance only visits the branches it uses; this makes sure the whole model is understood.
        """
        todo, seen = [self.node(root)], set()
        while todo:
            node = self.resolve(todo.pop())
            if id(node.schema) in seen:
                continue
            seen.add(id(node.schema))
            schema = node.schema
            unknown = set(schema) - ASSERTIONS - ANNOTATIONS
            if unknown:
                raise SchemaError(f"unsupported keywords {sorted(unknown)} in {node.file.name}")
            if schema.get("type") is not None and schema["type"] not in _TYPES:
                raise SchemaError(f"unsupported type {schema['type']!r} in {node.file.name}")
            fmt = schema.get("format")
            if fmt is not None and fmt not in INTEGER_FORMATS and fmt not in ANNOTATION_FORMATS:
                raise SchemaError(f"unsupported format {fmt!r} in {node.file.name}")
            children = [*schema.get("properties", {}).values(), *schema.get("allOf", []), *schema.get("oneOf", [])]
            children += [schema[k] for k in ("items", "additionalProperties") if isinstance(schema.get(k), dict)]
            todo += [_Node(child, node.file) for child in children]
        return len(seen)

    # --- the checks -------------------------------------------------------------------------------------------

    def _check(self, value: Any, node: _Node, path: str, closed: bool) -> Report:
        node = self.resolve(node)
        schema = node.schema
        unknown = set(schema) - ASSERTIONS - ANNOTATIONS
        if unknown:
            raise SchemaError(f"unsupported keywords {sorted(unknown)} in {node.file.name}")
        report = Report()
        if schema.get("deprecated"):
            report.deprecated.append(f"{path}: deprecated ({node.file.name})")
        if schema.get("readOnly"):
            report.errors.append(f"{path}: read-only, set by App Platform, not by the spec")
        fmt = schema.get("format")
        if fmt is not None and fmt not in INTEGER_FORMATS and fmt not in ANNOTATION_FORMATS:
            raise SchemaError(f"unsupported format {fmt!r} in {node.file.name}")
        if value is None and schema.get("nullable"):
            return report

        for member in schema.get("allOf", []):
            # Each member sees only part of the properties; closure is judged once, on the union, below.
            report.merge(self._check(value, _Node(member, node.file), path, closed=False))
        if "oneOf" in schema:
            report.merge(self._check_one_of(value, node, path))

        expected = schema.get("type")
        if expected is not None:
            if expected not in _TYPES:
                raise SchemaError(f"unsupported type {expected!r} in {node.file.name}")
            # bool is an int in Python, but `true` is no integer in the schema's sense.
            if not isinstance(value, _TYPES[expected]) or (isinstance(value, bool) and expected != "boolean"):
                report.errors.append(f"{path}: expected {expected}, got {type(value).__name__} {value!r}")
                return report
        if "enum" in schema and value not in schema["enum"]:
            report.errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
        if isinstance(value, str):
            report.errors += _string_errors(value, schema, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            report.errors += _number_errors(value, schema, path)
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                report.errors.append(f"{path}: more than {schema['maxItems']} items")
            if "items" in schema:
                for i, item in enumerate(value):
                    report.merge(self._check(item, _Node(schema["items"], node.file), f"{path}[{i}]", closed=True))
        if isinstance(value, dict):
            report.merge(self._check_object(value, node, path, closed))
        return report

    def _check_one_of(self, value: Any, node: _Node, path: str) -> Report:
        branches = [self._check(value, _Node(b, node.file), path, closed=True) for b in node.schema["oneOf"]]
        matching = [b for b in branches if not b.errors]
        if len(matching) == 1:
            return matching[0]
        if matching:
            return Report(errors=[f"{path}: {value!r} matches {len(matching)} branches of oneOf, not exactly one"])
        reasons = "; ".join(error for branch in branches for error in branch.errors)
        return Report(errors=[f"{path}: {value!r} matches no branch of oneOf ({reasons})"])

    def _check_object(self, value: dict[Any, Any], node: _Node, path: str, closed: bool) -> Report:
        schema = node.schema
        report = Report()
        for name in schema.get("required", []):
            if name not in value:
                report.errors.append(f"{path}: missing required property {name!r}")
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            if name in value:
                report.merge(self._check(value[name], _Node(sub, node.file), f"{path}.{name}", closed=True))
        if not closed:
            return report
        known = self._known_properties(node)
        additional = schema.get("additionalProperties", False)
        for name in value:
            if not isinstance(name, str):
                report.errors.append(f"{path}: key {name!r} is not a string")
            elif name in known:
                continue
            elif additional is False:
                report.errors.append(f"{path}: unknown property {name!r}")
            elif isinstance(additional, dict):
                report.merge(self._check(value[name], _Node(additional, node.file), f"{path}.{name}", closed=True))
        return report

    def _known_properties(self, node: _Node) -> set[str]:
        """Property names of a schema and of all its allOf members, however deeply they are referenced."""
        node = self.resolve(node)
        names = set(node.schema.get("properties", {}))
        for member in node.schema.get("allOf", []):
            names |= self._known_properties(_Node(member, node.file))
        return names


def _own_properties(document: Any) -> set[str]:
    return set(document.get("properties", {})) if isinstance(document, dict) else set()


def _string_errors(value: str, schema: Schema, path: str) -> list[str]:
    errors = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: {value!r} is shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: {value!r} is longer than {schema['maxLength']}")
    # JSON Schema patterns are not anchored: search, not match. These patterns anchor themselves with ^...$.
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']!r}")
    return errors


def _number_errors(value: float, schema: Schema, path: str) -> list[str]:
    errors = []
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: {value!r} is below the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: {value!r} is above the maximum {schema['maximum']}")
    fmt = schema.get("format")
    if fmt in INTEGER_FORMATS:
        low, high = INTEGER_FORMATS[fmt]
        if not low <= value <= high:
            errors.append(f"{path}: {value!r} is out of range for {fmt}")
    return errors
