"""The OpenAPI document matches the code: parameters, limits, categories, problems, events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from connectors.api import problems
from connectors.api.app import openapi_document
from connectors.api.params import LIST_PARAMS, MAX_LIMIT
from streams.catalogue import category_names
from streams.event import ACTOR_TYPES, OUTCOMES

pytestmark = pytest.mark.unit

DOC: dict[str, Any] = json.loads(openapi_document())
EVENT_SCHEMA = Path(__file__).parents[2] / "schemas" / "audit_event.schema.json"


def _list_params() -> dict[str, dict[str, Any]]:
    op = DOC["paths"]["/v1/audit-events"]["get"]
    return {p["name"]: p for p in op["parameters"]}


def test_it_is_an_openapi_31_document_with_valid_schemas() -> None:
    assert DOC["openapi"].startswith("3.1.")
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_list_parameter_is_documented_and_nothing_else() -> None:
    params = _list_params()
    assert set(params) == LIST_PARAMS
    assert all(p["in"] == "query" and not p["required"] for p in params.values())
    limit = params["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, MAX_LIMIT, 100)
    assert params["category"]["schema"]["enum"] == list(category_names())
    assert params["actor_type"]["schema"]["enum"] == list(ACTOR_TYPES)
    assert params["outcome"]["schema"]["enum"] == list(OUTCOMES)
    for category in category_names():
        assert category in params["action"]["schema"]["pattern"]


def test_the_event_schema_is_the_published_json_schema() -> None:
    published = json.loads(EVENT_SCHEMA.read_text())
    text = json.dumps(published).replace("#/$defs/text", "#/components/schemas/Text")
    expected = {k: v for k, v in json.loads(text).items() if k not in ("$schema", "$id", "$defs")}
    assert DOC["components"]["schemas"]["AuditEvent"] == expected
    assert DOC["components"]["schemas"]["Text"] == published["$defs"]["text"]


def test_every_problem_type_the_code_can_send_is_listed() -> None:
    listed = set(DOC["components"]["schemas"]["Problem"]["properties"]["type"]["enum"])
    sent = {cls("x").type_uri for cls in _problem_classes() if cls is not problems.RateLimited}
    sent |= {problems.RateLimited(1).type_uri, "urn:zaita:siem-export:problem:http-error"}
    sent.discard(problems.InvalidParameters([]).type_uri)
    sent.add(problems.InvalidParameters([problems.InvalidParam("a", "b")]).type_uri)
    assert sent <= listed


def _problem_classes() -> list[type[problems.Problem]]:
    found: list[type[problems.Problem]] = [problems.Problem]
    for cls in list(found):
        found.extend(cls.__subclasses__())
    return [c for c in found if c is not problems.InvalidParameters]


def test_authentication_and_its_answers_are_documented() -> None:
    assert DOC["security"] == [{"machineAccount": ["audit:read"]}]
    assert DOC["components"]["securitySchemes"]["machineAccount"]["scheme"] == "bearer"
    assert DOC["paths"]["/v1/openapi.json"]["get"]["security"] == []
    responses = DOC["components"]["responses"]
    for name, header in (
        ("Unauthorized", "WWW-Authenticate"),
        ("Forbidden", "WWW-Authenticate"),
        ("RateLimited", "Retry-After"),
        ("Unavailable", "Retry-After"),
    ):
        assert responses[name]["headers"][header]["required"] is True
    for path in ("/v1/audit-events", "/v1/audit-events/{event_id}"):
        codes = set(DOC["paths"][path]["get"]["responses"])
        assert {"200", "400", "401", "403", "429", "500", "503"} <= codes


def test_the_description_documents_the_windows_and_retention() -> None:
    description = DOC["info"]["description"]
    for words in ("Retention", "31 days", "24 hours", "order=ingestion", "x-ndjson", "429"):
        assert words in description
