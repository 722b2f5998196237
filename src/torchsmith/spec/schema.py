"""A JSON Schema (draft 2020-12) for spec files, so editors can check and complete them.

It lists every name a spec can use at the time it is made (torch.nn layers, registered blocks, graph ops,
registered models). ``build`` does its own, stricter validation (argument types, references, shapes).

    >>> schema = spec_schema()
    >>> schema["$schema"], "Conv2d" in schema["$defs"]["layer_name"]["enum"]
    ('https://json-schema.org/draft/2020-12/schema', True)
"""

from __future__ import annotations

from typing import Any

from ..codec import CHILD_NAME
from ..registry import list_models
from . import names as N
from .parse import MAX_REPEAT

__all__ = ["spec_schema"]


def _layer(ref_self: str, names: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """A layer: a bare name, or a mapping of one name (+ repeat, + from in graphs)."""
    props: dict[str, Any] = {n: {"$ref": "#/$defs/arguments"} for n in names}
    props.update(
        {
            "Sequential": {"oneOf": [{"$ref": "#/$defs/layer_list"}, {"$ref": "#/$defs/layer_map"}]},
            "ModuleList": {"$ref": "#/$defs/layer_list"},
            "ModuleDict": {"$ref": "#/$defs/layer_map"},
            "Graph": {"$ref": "#/$defs/graph"},
            "repeat": {"type": "integer", "minimum": 1, "maximum": MAX_REPEAT, "description": "stack this many copies"},
            **extra,
        }
    )
    return {
        "description": "A layer: a name (ReLU) or {Name: arguments}.",
        "oneOf": [
            {"$ref": f"#/$defs/{ref_self}_name"},
            {
                "type": "object",
                "properties": props,
                "additionalProperties": False,
                # exactly one layer name per mapping, beside repeat (and from)
                "oneOf": [{"required": [n]} for n in [*names, "Sequential", "ModuleList", "ModuleDict", "Graph"]],
            },
        ],
    }


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a spec document, naming every layer, block, op and model registered now."""
    layers = sorted(N.NN_LAYERS) + sorted(N.blocks()) + sorted(list_models())
    ops = sorted(N.ops())
    shape = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 8}
    value: dict[str, Any] = {
        "description": "A plain argument value.",
        "anyOf": [
            {"type": ["null", "boolean", "number", "string"]},
            {"type": "array", "items": {"$ref": "#/$defs/value"}},
            {"type": "object", "additionalProperties": {"$ref": "#/$defs/value"}},
        ],
    }
    names = {"type": "string", "pattern": rf"^{CHILD_NAME}(\.{CHILD_NAME})*$"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://torchsmith.dev/schemas/spec.json",
        "title": "torchsmith model spec",
        "description": "A model as data: exactly one of layers, graph or model; see docs/specs.md.",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "input": {
                "description": "input shape(s), for 'auto' widths and shape checks",
                "oneOf": [shape, {"type": "object", "additionalProperties": shape, "minProperties": 1}],
            },
            "layers": {"oneOf": [{"$ref": "#/$defs/layer_list"}, {"$ref": "#/$defs/layer_map"}]},
            "graph": {"$ref": "#/$defs/graph"},
            "model": {"$ref": "#/$defs/layer"},
        },
        "patternProperties": {"^x-": {"description": "ignored: a place for YAML anchors"}},
        "additionalProperties": False,
        "oneOf": [{"required": ["layers"]}, {"required": ["graph"]}, {"required": ["model"]}],
        "$defs": {
            "value": value,
            "arguments": {
                "description": "null, [positional...], {keyword: value, args: [positional...]}, or one positional value",
                "anyOf": [
                    {"type": ["null", "boolean", "number", "string"]},
                    {"type": "array", "items": {"$ref": "#/$defs/value"}},
                    {
                        "type": "object",
                        "properties": {"args": {"type": "array", "items": {"$ref": "#/$defs/value"}}},
                        "additionalProperties": {"$ref": "#/$defs/value"},
                    },
                ],
            },
            "layer_name": {"type": "string", "enum": layers},
            "node_name": {"type": "string", "enum": layers + ops},
            "layer": _layer("layer", layers, {}),
            "node": _layer(
                "node",
                layers + ops,
                {"from": {"oneOf": [names, {"type": "array", "items": names, "minItems": 1}], "description": "inputs: earlier nodes or graph inputs"}},
            ),
            "layer_list": {"type": "array", "items": {"$ref": "#/$defs/layer"}, "minItems": 1},
            "layer_map": {
                "type": "object",
                "propertyNames": {"pattern": f"^{CHILD_NAME}$"},
                "additionalProperties": {"$ref": "#/$defs/layer"},
                "minProperties": 1,
            },
            "graph": {
                "type": "object",
                "properties": {
                    "inputs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
                    "nodes": {
                        "type": "object",
                        "propertyNames": names,
                        "additionalProperties": {"$ref": "#/$defs/node"},
                        "minProperties": 1,
                    },
                    "outputs": {
                        "oneOf": [names, {"type": "array", "items": names, "minItems": 1}, {"type": "object", "additionalProperties": names}]
                    },
                },
                "required": ["nodes"],
                "additionalProperties": False,
            },
        },
    }
