"""Property-based test of the API from its own OpenAPI document (schemathesis).

Every operation gets generated inputs, valid and invalid, over real HTTP, and every default
check runs on every answer: no 5xx, only status codes and content types the document declares,
bodies matching their schemas, invalid input rejected and valid input accepted. A finding
means a bug or a document that lies.

(schemathesis' own pytest integration, ``from_fixture``, does not work with pytest 9 yet:
the operations' strategies are driven with hypothesis directly.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.api.conftest import ApiServer
from tests.api.test_routes import ROUTES


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
        case.call_and_validate(base_url=api.url, timeout=10)

    check()
