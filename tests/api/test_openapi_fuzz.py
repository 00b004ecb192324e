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

from cesar.api.settings import AuthSettings
from tests.api.conftest import ApiServer, serve, settings_for
from tests.api.test_routes import ROUTES

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


#: Invalid input exists only where there are parameters.
CASES = [(path, GenerationMode.POSITIVE) for path in sorted(ROUTES)] + [
    (path, GenerationMode.NEGATIVE) for path in ("/agents", "/agents/{agent_id}")]


@pytest.mark.parametrize(("path", "mode"), CASES)
def test_no_input_breaks_the_api(api: ApiServer, api_schema: object, path: str,
                                 mode: GenerationMode) -> None:
    operation = api_schema[path]["GET"]  # type: ignore[index]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        # The valid key replaces the generated header, unless mangling the header is the point
        # of this (negative) case: then it goes as generated and must be refused.
        meta = case._meta
        mangled = meta is not None and meta.is_negative_at(ParameterLocation.HEADER)
        case.call_and_validate(base_url=api.url, timeout=10,
                               headers=None if mangled else api.headers)

    check()


@pytest.mark.parametrize("path", sorted(ROUTES - OPEN))
def test_without_a_key_every_protected_route_is_401(api: ApiServer, api_schema: object,
                                                     path: str) -> None:
    operation = api_schema[path]["GET"]  # type: ignore[index]
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
