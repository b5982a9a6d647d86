"""The OpenAPI schema says exactly what the service accepts and answers.

Litestar builds the document from the handlers; ``refine`` corrects it once,
when the app is made, where Litestar's generator says less than the code
enforces (found by schemathesis, run in CI with every check):

- request and response bodies: each struct's schema is msgspec's own
  (``msgspec.json.schema_components``), generated from the same types and
  constraints that decode the requests: ``additionalProperties: false`` for
  structs that forbid unknown fields, the bounds of list items (user ids),
  ``exclusiveMinimum`` and the step of a percent, patterns;
- cross-field rules a struct states beside its fields (``__schema_rules__``,
  e.g. "not both ttl_seconds and expires_at") are added to its schema;
- a union is ``anyOf``, never ``oneOf``: ``?expand=true`` answers one of two
  shapes that agree on an empty list, and ``oneOf`` would call that
  answer invalid;
- a parameter is never null (it is absent, or text): an optional one loses
  the ``null`` branch Litestar gives it, so the constraints (a user id's
  integer bounds) apply to what can be sent;
- every operation that takes a body documents 415 (a body not declared
  JSON, ``service.strict``), and every error answer is JSON (``ErrorBody``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec

from service.models import ErrorBody

_REF = "#/components/schemas/{name}"


def _structs(app: Litestar) -> set[type]:
    """The msgspec structs the handlers take as bodies and give as answers."""
    found: set[type] = {ErrorBody}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            signature = handler.parsed_fn_signature
            annotations = [signature.return_type.annotation]
            if "data" in signature.parameters:
                annotations.append(signature.parameters["data"].annotation)
            for spec in (handler.responses or {}).values():
                if isinstance(spec, ResponseSpec):
                    annotations.append(spec.data_container)
            for annotation in annotations:
                found |= _struct_types(annotation)
    return found


def _struct_types(annotation: Any) -> set[type]:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return {annotation}
    out: set[type] = set()
    for arg in getattr(annotation, "__args__", ()):
        out |= _struct_types(arg)
    return out


def _nested_structs(info: Any, seen: set[int] | None = None) -> set[type]:
    """Every struct class a msgspec type info reaches."""
    seen = set() if seen is None else seen
    if id(info) in seen:
        return set()
    seen.add(id(info))
    out: set[type] = set()
    if isinstance(info, msgspec.inspect.StructType):
        out.add(info.cls)
        for field in info.fields:
            out |= _nested_structs(field.type, seen)
    for name in ("type", "item_type", "key_type", "value_type"):
        if hasattr(info, name) and not isinstance(getattr(info, name), type):
            out |= _nested_structs(getattr(info, name), seen)
    for member in getattr(info, "types", ()):
        out |= _nested_structs(member, seen)
    return out


def _never_null(parameter: dict[str, Any]) -> None:
    schema = parameter.get("schema", {})
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if "anyOf" not in schema:
        return
    del schema["anyOf"]
    if "type" not in schema and len(branches) == 1:
        schema.update(branches[0])
    elif "type" not in schema:
        schema["anyOf"] = branches


def _any_of(node: Any) -> Any:
    if isinstance(node, dict):
        return {("anyOf" if k == "oneOf" else k): _any_of(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_any_of(v) for v in node]
    return node


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}}}


def refine(app: Litestar) -> None:
    """Corrects the app's OpenAPI document in place (module docstring)."""
    document: dict[str, Any] = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    structs = sorted(_structs(app), key=str)
    _, generated = msgspec.json.schema_components(structs, ref_template=_REF)
    for info in msgspec.inspect.multi_type_info(structs):
        for struct in _nested_structs(info):
            rules = getattr(struct, "__schema_rules__", None)
            if rules and struct.__name__ in generated:
                generated[struct.__name__].update(rules)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(generated)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            operation = _any_of(operation)
            responses = operation["responses"]
            for parameter in operation.get("parameters", []):
                _never_null(parameter)
            if "requestBody" in operation:
                responses.setdefault(
                    "415",
                    {"description": "The body is not declared as JSON (Content-Type: "
                     "application/json)", "content": _error_content()},
                )  # fmt: skip
            for status, response in responses.items():
                if status.startswith(("4", "5")) and "content" in response:
                    media = response["content"]
                    if "application/json" not in media:  # e.g. an SSE or CSV operation
                        response["content"] = {"application/json": next(iter(media.values()))}
            item[method] = operation
        document["paths"][path] = item
