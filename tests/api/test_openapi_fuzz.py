"""Property-based test of the API from its own OpenAPI document (schemathesis).

Every operation gets generated inputs, valid and invalid, over real HTTP, and every default
check runs on every answer: no 5xx, only status codes and content types the document declares,
bodies matching their schemas, invalid input rejected and valid input accepted. A finding
means a bug or a document that lies. It runs twice: with a valid key with every scope (the
generated Authorization header replaced by it), and with no Authorization header at all, where
every route that needs a key answers 401 whatever else the request holds.

(schemathesis' own pytest integration, ``from_fixture``, does not work with pytest 9 yet:
the operations' strategies are driven with hypothesis directly.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cesar.api.settings import AuthSettings
from tests.api.helpers import ROUTES, ApiServer, serve, settings_for

#: Routes that answer without a key.
OPEN = {"/health", "/health/live"}


@pytest.fixture(scope="module")
def api(migrated_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """Generated requests fail authentication on purpose: no throttling of this client here."""
    auth = AuthSettings(_env_file=None, auth_failure_limit=100_000)  # type: ignore[call-arg]
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with serve(settings_for(migrated_url, tmp), auth) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(api: ApiServer) -> Iterator[object]:
    yield schemathesis.openapi.from_url(f"{api.url}/openapi.json")


def test_the_document_lists_the_routes_fuzzed_here(api_schema: object) -> None:
    operations = {r.ok().path for r in api_schema.get_all_operations()}  # type: ignore[attr-defined]
    assert operations == ROUTES


#: The method of each route (the work routes that change something are POSTs).
METHODS = {"/tasks": ("GET", "POST"), "/tasks/{task_id}/cancel": ("POST",),
           "/dispatch": ("POST",), "/runs": ("GET", "POST"), "/runs/{run_id}/events": ("POST",),
           "/runs/{run_id}/finish": ("POST",)}
OPERATIONS = [(path, method) for path in sorted(ROUTES) for method in METHODS.get(path, ("GET",))]
#: Invalid input exists only where there are parameters or a body.
CASES = [(path, method, GenerationMode.POSITIVE) for path, method in OPERATIONS] + [
    (path, method, GenerationMode.NEGATIVE) for path, method in OPERATIONS
    if path not in {"/health", "/health/live", "/metrics"}]


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_no_input_breaks_the_api(api: ApiServer, api_schema: object, path: str, method: str,
                                 mode: GenerationMode) -> None:
    operation = api_schema[path][method]  # type: ignore[index]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        # The valid key replaces the generated header, unless mangling the header is the point
        # of this (negative) case: then it goes as generated and must be refused.
        meta = case._meta
        mangled = meta is not None and meta.is_negative_at(ParameterLocation.HEADER)
        headers = None if mangled else api.headers
        response = case.call(base_url=api.url, timeout=10, headers=headers)
        excluded = [positive_data_acceptance] if refers_to_state(response) else None
        case.validate_response(response, excluded_checks=excluded, headers=headers)

    check()


#: Fields whose schema-valid values the database can still refuse with 422, as documented: an
#: agent or task id that no row has, an Idempotency-Key already used with another body.
STATEFUL_FIELDS = {("body", "agent_id"), ("body", "task_id"), ("header", "idempotency-key")}


def refers_to_state(response: object) -> bool:
    """Whether ``response`` is a 422 about one of STATEFUL_FIELDS only (so "valid input is
    accepted" cannot apply); every other answer gets every check."""
    if getattr(response, "status_code", None) != 422:
        return False
    try:
        errors = response.json()["detail"]  # type: ignore[attr-defined]
        return all(tuple(e["loc"][:2]) in STATEFUL_FIELDS for e in errors)
    except (ValueError, KeyError, TypeError):
        return False


@pytest.mark.parametrize(("path", "method"), [op for op in OPERATIONS if op[0] not in OPEN])
def test_without_a_key_every_protected_route_is_401(api: ApiServer, api_schema: object,
                                                     path: str, method: str) -> None:
    operation = api_schema[path][method]  # type: ignore[index]
    seen: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(max_examples=20, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        if case.headers:
            case.headers.pop("Authorization", None)
        response = case.call(base_url=api.url, timeout=10)
        seen.add(response.status_code)
        assert response.status_code == 401, response.text
        challenge = {k.lower(): v for k, v in response.headers.items()}["www-authenticate"]
        assert str(challenge[0] if isinstance(challenge, list) else challenge).startswith("Bearer")

    check()
    assert seen == {401}


@pytest.mark.parametrize("payload", [{"a\x00": 1}, {"nested": {"\x00": "v"}}])
def test_a_key_the_api_refuses_is_invalid_in_its_document(api: ApiServer, payload: dict) -> None:
    """The fuzzer generates from the document: a body the document calls valid must be
    accepted. A NUL in a payload's key cannot be stored, so the document must refuse it too."""
    import httpx
    import jsonschema

    body = {"title": "t", "payload": payload}
    answer = httpx.post(f"{api.url}/tasks", json=body, timeout=10,
                        headers={**api.headers, "Idempotency-Key": "nul-key"})
    assert answer.status_code == 422, answer.text
    document = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    validator = jsonschema.Draft202012Validator(
        {**document, "$ref": "#/components/schemas/TaskCreate"})
    assert not validator.is_valid(body), "the document calls valid a body the API refuses"
