"""CheckTemplate: references per field, missing names and malformed placeholders,
over a real server, never resolving or returning a value."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb

from tests.support.resolve import (
    HEADER,
    JSON,
    RAW,
    URL,
    FetchSpy,
    FieldSpec,
    put_configs,
    put_secrets,
)
from tests.support.rpc import resolver
from tests.support.vault import VaultHandle

STORED = "STORED-VALUE-c81d-never-in-a-check"
CONFIG_VALUE = "CONFIG-VALUE-5e0a-never-in-a-check"
PROBLEM = rpb.ProblemKind


def check_request(fields: Sequence[FieldSpec]) -> rpb.CheckTemplateRequest:
    return rpb.CheckTemplateRequest(
        fields=[rpb.TemplateField(key=k, template=t, encoding=e) for k, t, e in fields]  # type: ignore[arg-type]
    )


async def check(
    vault: VaultHandle, fields: list[FieldSpec], role: str = "admin"
) -> rpb.CheckTemplateResponse:
    response = await resolver(vault, role).CheckTemplate(check_request(fields), timeout=30)
    wire = response.SerializeToString()
    assert STORED.encode() not in wire
    assert CONFIG_VALUE.encode() not in wire
    return response


@pytest.fixture
async def stocked(vault: VaultHandle) -> VaultHandle:
    await put_secrets(vault, {"orders_key": STORED, "stripe_key": STORED + "-2"})
    await put_configs(vault, {"api_host": CONFIG_VALUE})
    return vault


def refs(response: rpb.CheckTemplateResponse) -> list[tuple[str, list[str], list[str], list[str]]]:
    return [
        (r.key, list(r.secret_names), list(r.config_keys), list(r.input_names))
        for r in response.references
    ]


def problems(response: rpb.CheckTemplateResponse) -> list[tuple[str, int, str, str, int]]:
    return [(p.field_key, p.kind, p.placeholder, p.name, p.offset) for p in response.problems]


async def test_references_per_field_in_order(stocked: VaultHandle) -> None:
    response = await check(
        stocked,
        [
            ("url", "https://{{config:api_host}}/o/{{input.id}}?k={{secret:orders_key}}", URL),
            ("header:Authorization", "Bearer {{ secret:orders_key }}", HEADER),
            (
                "body",
                '{"a": "{{secret:Stripe_Key}}", "b": "{{secret:orders_key}}", '
                '"c": "{{input.id}}", "d": "{{input.x.y}}"}',
                JSON,
            ),
            ("plain", "nothing {{here}}", RAW),
        ],
    )
    assert refs(response) == [
        ("url", ["orders_key"], ["api_host"], ["id"]),
        ("header:Authorization", ["orders_key"], [], []),
        ("body", ["Stripe_Key", "orders_key"], [], ["id", "x.y"]),
        ("plain", [], [], []),
    ]
    assert list(response.problems) == []


async def test_typo_is_reported_as_secret_not_found(stocked: VaultHandle) -> None:
    template = "https://api.example.com/orders?key={{secret:orderskey}}"
    response = await check(stocked, [("url", template, URL)])
    assert refs(response) == [("url", ["orderskey"], [], [])]
    (problem,) = response.problems
    assert problem.kind == PROBLEM.PROBLEM_KIND_SECRET_NOT_FOUND
    assert problem.field_key == "url"
    assert problem.name == "orderskey"
    assert problem.placeholder == "{{secret:orderskey}}"
    assert problem.offset == template.index("{{secret:orderskey}}")
    assert "orderskey" in problem.message


async def test_missing_config_is_reported(stocked: VaultHandle) -> None:
    response = await check(stocked, [("u", "https://{{config:api_hots}}/v1", URL)])
    (problem,) = response.problems
    assert problem.kind == PROBLEM.PROBLEM_KIND_CONFIG_NOT_FOUND
    assert problem.name == "api_hots"
    assert problem.offset == len("https://")


async def test_names_are_checked_ignoring_case(stocked: VaultHandle) -> None:
    response = await check(stocked, [("f", "{{secret:ORDERS_KEY}} {{config:API_HOST}}", RAW)])
    assert list(response.problems) == []
    assert refs(response) == [("f", ["ORDERS_KEY"], ["API_HOST"], [])]


async def test_malformed_placeholder_reported_with_offset(stocked: VaultHandle) -> None:
    template = "Bearer {{secret:orders key}}"
    response = await check(stocked, [("header:Authorization", template, HEADER)])
    (problem,) = response.problems
    assert problem.kind == PROBLEM.PROBLEM_KIND_MALFORMED_PLACEHOLDER
    assert problem.field_key == "header:Authorization"
    assert problem.offset == len("Bearer ")
    assert problem.placeholder.startswith("{{secret:orders")
    assert "header:Authorization" in problem.message


async def test_valid_references_survive_other_problems_in_the_field(stocked: VaultHandle) -> None:
    """A typo beside a malformed placeholder is still caught (the field does not compile)."""
    template = "{{secret:orders_key}} {{secret:orderskey}} {{secret:bad name}} {{input.id}}"
    response = await check(stocked, [("raw", template, RAW)])
    assert refs(response) == [("raw", ["orders_key", "orderskey"], [], ["id"])]
    assert problems(response) == [
        (
            "raw",
            PROBLEM.PROBLEM_KIND_SECRET_NOT_FOUND,
            "{{secret:orderskey}}",
            "orderskey",
            template.index("{{secret:orderskey}}"),
        ),
        (
            "raw",
            PROBLEM.PROBLEM_KIND_MALFORMED_PLACEHOLDER,
            response.problems[1].placeholder,
            response.problems[1].name,
            template.index("{{secret:bad"),
        ),
    ]


async def test_encoding_violations_keep_references(stocked: VaultHandle) -> None:
    response = await check(
        stocked,
        [
            ("url", "https://{{secret:orders_key}}/x?k={{secret:missing_one}}", URL),
            ("body", '{"a": {{secret:missing_two}}, "b": "{{config:api_host}}"}', JSON),
        ],
    )
    assert refs(response) == [
        ("url", ["orders_key", "missing_one"], [], []),
        ("body", ["missing_two"], ["api_host"], []),
    ]
    found = [(p.field_key, p.kind, p.name, p.offset) for p in response.problems]
    assert found == [
        ("url", PROBLEM.PROBLEM_KIND_INVALID_FOR_ENCODING, "orders_key", len("https://")),
        ("url", PROBLEM.PROBLEM_KIND_SECRET_NOT_FOUND, "missing_one", 34),
        ("body", PROBLEM.PROBLEM_KIND_INVALID_FOR_ENCODING, "missing_two", 6),
        ("body", PROBLEM.PROBLEM_KIND_SECRET_NOT_FOUND, "missing_two", 6),
        ("body", PROBLEM.PROBLEM_KIND_INVALID_FOR_ENCODING, "", 28),
    ]


async def test_many_problems_in_one_answer(stocked: VaultHandle) -> None:
    response = await check(
        stocked,
        [
            ("a", "{{secret:nope_a}} {{config:nope_c}}", RAW),
            ("b", "{{secret:nope_b}} {{input.}}", RAW),
        ],
    )
    assert [(p.field_key, p.kind) for p in response.problems] == [
        ("a", PROBLEM.PROBLEM_KIND_SECRET_NOT_FOUND),
        ("a", PROBLEM.PROBLEM_KIND_CONFIG_NOT_FOUND),
        ("b", PROBLEM.PROBLEM_KIND_SECRET_NOT_FOUND),
        ("b", PROBLEM.PROBLEM_KIND_MALFORMED_PLACEHOLDER),
    ]


async def test_check_never_reads_a_value(stocked: VaultHandle) -> None:
    spy = FetchSpy(stocked)
    await check(stocked, [("f", "{{secret:orders_key}} {{config:api_host}}", RAW)])
    assert spy.calls == 0


@pytest.mark.parametrize("role", ["admin", "viewer", "resolver"])
async def test_every_role_may_check(stocked: VaultHandle, role: str) -> None:
    response = await check(stocked, [("f", "{{secret:orders_key}}", RAW)], role=role)
    assert refs(response) == [("f", ["orders_key"], [], [])]


async def test_no_token_is_unauthenticated(stocked: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await resolver(stocked, None).CheckTemplate(check_request([("f", "x", RAW)]))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_check_limits(stocked: VaultHandle) -> None:
    stub = resolver(stocked, "admin")
    for fields in (
        [("f", "x", RAW)] * 257,
        [("f", "x" * (1024 * 1024 + 1), RAW)],
        [("f", "{{input.a}}" * 1001, RAW)],
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CheckTemplate(check_request(fields))
        assert info.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    response = await check(stocked, [("f", "{{secret:orders_key}}", RAW)])
    assert list(response.problems) == []
