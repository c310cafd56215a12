"""API fuzzing: schemathesis generates requests from the OpenAPI spec for every operation and sends them with a key
of each role. No response may be a 5xx, documented responses must match their schema, and a role the route does not
allow must get 403 (the role matrix decides which)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import response_schema_conformance

from crm.models import Role
from tests.wiring.test_role_matrix import EXPECTED


def test_generated_requests_never_fail_the_server_nor_cross_roles(app, keys):
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = [route for route in EXPECTED
                  if not route[1].startswith(("/console", "/docs", "/redoc")) and route[1] != "/v1/openapi.json"]
    assert len(operations) == len(documented)  # every API route is fuzzed
    calls = {"requests": 0}

    for operation in operations:
        _fuzz(operation, EXPECTED[(operation.method.upper(), operation.path)], keys, calls)
    assert calls["requests"] > 1000


def _fuzz(operation, allowed, keys, calls) -> None:
    """Up to 8 generated requests for one operation, each sent with every role's key."""

    @given(case=operation.as_strategy())
    @settings(max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        for role in Role:
            response = case.call(headers={"Authorization": f"Bearer {keys[role]}"})
            calls["requests"] += 1
            where = (role.value, case.method, case.formatted_path, response.status_code, response.text[:300])
            not_ready = case.formatted_path == "/v1/health/ready" and response.status_code == 503  # documented
            assert response.status_code < 500 or not_ready, where
            if isinstance(allowed, set) and role not in allowed:
                assert response.status_code == 403, where
            elif response.status_code < 300:
                case.validate_response(response, checks=[response_schema_conformance])

    fuzz()
