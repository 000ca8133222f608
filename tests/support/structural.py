"""What a Kubernetes API server does with a custom object before storing it: prune, then validate.

The vendored CRDs (`tests/crds/`) carry each version's structural `openAPIV3Schema`. Like the API
server, `admit` first prunes every field the schema does not declare (unless
`x-kubernetes-preserve-unknown-fields` keeps it; `apiVersion`, `kind` and `metadata` always
stay), then validates what is left: types, enums, required fields, bounds, patterns, lengths.
Validation goes through `jsonschema` (Draft 4 keywords are what OpenAPI v3.0 uses, e.g. boolean
`exclusiveMinimum`); the Kubernetes extensions are handled here: `x-kubernetes-int-or-string`,
`nullable`. The CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parent.parent / "crds"


@functools.cache
def crd_schema(file_name: str, version: str) -> dict[str, Any]:
    """The `openAPIV3Schema` of `version` in the vendored CRD `file_name`."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: 10x faster on 1 MB
    crd = yaml.load((CRDS / file_name).read_text(), Loader=loader)  # a safe loader
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise KeyError(f"{file_name} has no version {version}")


def prune(
    value: Any, schema: dict[str, Any], path: str = "", root: bool = False
) -> tuple[Any, list[str]]:
    """`value` without the fields `schema` does not declare, and the paths of those dropped."""
    dropped: list[str] = []
    if isinstance(value, dict) and schema.get("type") == "object" or (
        isinstance(value, dict) and "properties" in schema
    ):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value, dropped
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        kept = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if root and key in ("apiVersion", "kind", "metadata"):
                kept[key] = item
            elif properties is not None and key in properties:
                kept[key], more = prune(item, properties[key], child)
                dropped += more
            elif isinstance(additional, dict):
                kept[key], more = prune(item, additional, child)
                dropped += more
            elif properties is None and additional in (None, True):
                kept[key] = item  # a free-form map (e.g. labels: additionalProperties absent)
            else:
                dropped.append(child)
        return kept, dropped
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = []
        for index, item in enumerate(value):
            pruned, more = prune(item, schema["items"], f"{path}[{index}]")
            items.append(pruned)
            dropped += more
        return items, dropped
    return value, dropped


def _json_schema(schema: Any) -> Any:
    """The OpenAPI schema as plain JSON Schema (Kubernetes extensions turned into keywords)."""
    if isinstance(schema, list):
        return [_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _json_schema(value) for key, value in schema.items()
                 if not key.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        converted.pop("type", None)
        converted.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    converted.pop("nullable", None)
    return converted


@functools.cache
def _validator(file_name: str, version: str) -> Any:
    import jsonschema

    schema = _json_schema(copy.deepcopy(crd_schema(file_name, version)))
    # The API server checks metadata itself (ObjectMeta), not through the CRD's schema.
    schema.get("properties", {}).pop("metadata", None)
    return jsonschema.Draft4Validator(schema)


def admit(
    obj: dict[str, Any], file_name: str, version: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the object as stored, the paths of dropped fields, the errors as the server words them)."""
    pruned, dropped = prune(obj, crd_schema(file_name, version), root=True)
    errors = []
    validator = _validator(file_name, version)
    for error in sorted(validator.iter_errors(pruned), key=lambda e: [str(p) for p in e.path]):
        where = ".".join(str(part) if not isinstance(part, int) else f"[{part}]"
                         for part in error.absolute_path).replace(".[", "[")
        errors.append(f"{where or '<root>'}: Invalid value: {error.message}")
    return pruned, dropped, errors
