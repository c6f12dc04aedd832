"""Property-based tests of the control plane's OpenAPI document (schemathesis).

Every operation is called with generated inputs, valid and invalid, with a
token that may call it; every response must match the document (status
codes, content types, bodies) and none may be a server error. Driven through
schemathesis' strategies rather than its pytest plugin (which does not yet
support pytest 9's fixtures).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.openapi import from_asgi

from tests.review.review_helpers import (
    ADMIN,
    ReviewEnv,
    bearer,
    build_env,
    control_app,
    make_decision,
)

EXAMPLES = 20


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewEnv]:
    env = build_env(tmp_path_factory.mktemp("fuzz"))
    for i in range(5):
        d = make_decision(f"fz{i}")
        env.decisions.add([d])
        env.store.enqueue(d)
    yield env
    env.store.close()
    env.sink.close()


def operations(env: ReviewEnv) -> list[schemathesis.APIOperation]:
    # No explainer: the fuzzer is after the API's contract, not TreeSHAP.
    schema = from_asgi("/openapi.json", control_app(env, None))
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_the_api_matches_its_openapi_document(
    fuzz_env: ReviewEnv, mode: schemathesis.GenerationMode
) -> None:
    ops = operations(fuzz_env)
    labels = {op.label for op in ops}
    assert "POST /review/items/{request_id}/{row}/decision" in labels
    assert "GET /decisions/{request_id}/{row}" in labels
    if mode == schemathesis.GenerationMode.NEGATIVE:
        # Invalid input needs an input: operations without parameters or body have none.
        ops = [op for op in ops if len(op.path_parameters) + len(op.query) + len(op.body) > 0]
    for op in ops:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            # A case generated without credentials must get 401, so it goes without a token.
            anonymous = case.operation.schema.is_security_param_negated(case)
            case.call_and_validate(headers=None if anonymous else bearer(ADMIN))

        check()
