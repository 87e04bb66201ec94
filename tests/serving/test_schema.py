"""Property-based API test: schemathesis generates requests from the app's own OpenAPI schema
(a bounded number per operation and mode, valid and invalid) and no answer may be a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow

EXAMPLES = 25


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_schema_has_the_operations(api_schema):
    labels = sorted(op.ok().label for op in api_schema.get_all_operations())
    assert labels == ["GET /v1/health", "GET /v1/model", "POST /v1/predict"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors(api_schema, mode):
    no_server_errors(api_schema, mode)


@pytest.fixture(scope="module")
def keyed_schema(tmp_path_factory):
    """The app with API keys and a rate limit (high enough not to hide the endpoints behind 429s),
    around a predictor without models (the HTTP layer is what is under test), and a good key."""
    from koemo.serving.app import create_app
    from koemo.serving.security import KeyStore, Security, add_key
    from tests.serving.conftest import fake_predictor

    path = tmp_path_factory.mktemp("keys") / "keys"
    key = add_key(path, "schemathesis")
    app = create_app(fake_predictor(), security=Security(keys=KeyStore.load(path), rate_limit=10_000))
    return schemathesis.openapi.from_asgi("/openapi.json", app), key


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors_with_a_key(keyed_schema, mode):
    """With keys configured and a good key: no request is refused for its key, none is a server error."""
    api_schema, key = keyed_schema
    seen = no_server_errors(api_schema, mode, {"Authorization": f"Bearer {key}"})
    assert not {401, 403, 429} & set(seen), seen


def no_server_errors(api_schema, mode, headers: dict[str, str] | None = None) -> dict[int, int]:
    """Runs the generated requests; returns how many got each status."""
    seen: dict[int, int] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # no parameters or body: nothing can be made invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 400:
                body = response.json()
                assert {"error", "file", "problem", "status"} <= set(body), body
                assert body["status"] == response.status_code and "\n" not in body["error"]

        check()
    assert seen, "schemathesis generated no requests"
    print(mode.value, dict(sorted(seen.items())))
    return seen
