"""The people routes against their OpenAPI document (schemathesis), as tests/review does for
the review API: generated inputs, valid and invalid; every answer must match the document and
none may be a server error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.openapi import from_asgi

from sidecar.config import load_settings
from sidecar.control.app import create_control_app
from sidecar.control.auth import authenticator_from_settings
from sidecar.control.lookup import Explanations
from sidecar.people.context import build_context
from sidecar.people.router import create_people_router
from tests.review.review_helpers import (
    ADMIN,
    FEATURES,
    TOKENS,
    ReviewEnv,
    bearer,
    build_env,
    make_decision,
)
from tests.servers import free_port

EXAMPLES = 15


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewEnv]:
    env = build_env(tmp_path_factory.mktemp("people-fuzz"))
    for i in range(5):
        d = make_decision(f"fz{i}")
        env.decisions.add([d])
        env.store.enqueue(d)
    yield env
    env.store.close()
    env.sink.close()


def operations(env: ReviewEnv) -> list[schemathesis.APIOperation]:
    s = load_settings(
        environ={},
        overrides={
            "model": {
                "feature_names": FEATURES,
                "class_labels": ["repaid", "default"],
                "favourable_label": "repaid",
            },
            "review": {"db_path": str(env.db_path)},
            "auth": {"tokens": TOKENS},
        },
    )
    explanations = Explanations(
        store=env.store,
        decisions=env.decisions,
        explain_now=None,
        cache_size=10,
        registry=env.registry,
    )
    router = create_people_router(
        settings=s,
        context=build_context(s, None),
        authenticator=authenticator_from_settings(s.auth),
        explanations=explanations,
        store=env.store,
        registry=env.registry,
        # Nothing listens there: corrected values are filed without an answer.
        proxy_url=f"http://127.0.0.1:{free_port()}",
    )
    app = create_control_app(registry=env.registry, ready_checks=[], routers=[router])
    schema = from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_the_people_routes_match_their_openapi_document(
    fuzz_env: ReviewEnv, mode: schemathesis.GenerationMode
) -> None:
    ops = operations(fuzz_env)
    labels = {op.label for op in ops}
    assert "POST /decisions/{request_id}/{row}/contest" in labels
    assert "GET /decisions/{request_id}/notice" in labels
    if mode == schemathesis.GenerationMode.NEGATIVE:
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
            anonymous = case.operation.schema.is_security_param_negated(case)
            case.call_and_validate(headers=None if anonymous else bearer(ADMIN))

        check()
