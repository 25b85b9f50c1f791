"""Schemathesis against the gateway's own OpenAPI schema, with the real model servers
behind it: valid and invalid requests to every operation, at least 500 in all, and not
one answer may be a 5xx (nor an SSE `error` event carrying a 5xx status that is not
a model server's fault)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from services.gateway.settings import GatewaySettings
from fake_servers import GatewayThread

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from hypothesis.errors import Unsatisfiable  # noqa: E402

MIN_CASES = 500
# Per operation and generation mode; six operations take input, in two modes each.
EXAMPLES = int(os.environ.get("PLOTARMOUR_SCHEMA_EXAMPLES", "48"))


@pytest.fixture(scope="module")
def gateway(gpt2_server, bdh_server):
    # Short generations keep 500+ cases near a minute on a small CI machine.
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh_server.address, port=0,
                                       max_new_tokens_limit=8, default_max_new_tokens=4, max_prompt_chars=2000,
                                       max_prompt_tokens=64, max_body_bytes=64 * 1024))
    yield gw
    gw.stop()


def server_error(response) -> str | None:
    """Why this answer counts as a server error, or None."""
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if "text/event-stream" in response.headers.get("content-type", "") and '"status": 500' in response.text:
        return f"SSE error event with status 500: {response.text[-300:]}"
    return None


def test_no_5xx_for_any_generated_request(gateway):
    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    cases, statuses, errors = Counter(), Counter(), []

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=gateway.url, timeout=60)
                cases[op.label] += 1
                statuses[response.status_code] += 1
                why = server_error(response)
                if why:  # collected, not raised: one run reports every failing request
                    errors.append(f"{case.method} {case.formatted_path} body={case.body!r}: {why}")

            try:
                run()
            except Unsatisfiable:
                pass  # an operation without parameters has no invalid form

    total = sum(cases.values())
    print(f"\nschemathesis: {total} cases; per operation {dict(cases)}; statuses {dict(sorted(statuses.items()))}")
    assert not errors, f"{len(errors)} server errors, first ones:\n" + "\n".join(errors[:10])
    assert total >= MIN_CASES, f"only {total} cases ran: {dict(cases)}"
    assert statuses[200] > 0 and statuses[422] > 0, statuses
