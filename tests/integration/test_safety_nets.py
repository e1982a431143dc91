"""Typo-proof templates, destination host binding, resolver scopes and the tool charset
(issue 10 items 3-5), against a real server over a real channel."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.resolve import (
    FORM,
    HEADER,
    JSON,
    RAW,
    URL,
    FieldSpec,
    put_configs,
    put_secrets,
    request,
    resolve,
)
from tests.support.rpc import expect_error, resolver, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.auth import RESOLVER, TokenEntry, hash_token, new_token

PROBLEM = rpb.ProblemKind
STRIPE = "sk_live_STRIPE-c0ffee-never-in-an-error"
ORDERS = "ORDERS-VALUE-5ea1-never-in-an-error"


def check_request(fields: Sequence[FieldSpec]) -> rpb.CheckTemplateRequest:
    return rpb.CheckTemplateRequest(
        fields=[rpb.TemplateField(key=k, template=t, encoding=e) for k, t, e in fields]  # type: ignore[arg-type]
    )


async def check(
    vault: VaultHandle, fields: Sequence[FieldSpec], role: str = "admin", token: str | None = None
) -> rpb.CheckTemplateResponse:
    stub = resolver(vault, role) if token is None else _stub(vault, token)
    return await stub.CheckTemplate(check_request(fields), timeout=30)


def _stub(vault: VaultHandle, token: str) -> rpbg.ResolverServiceStub:
    return rpbg.ResolverServiceStub(vault.channel(None, token=token))


# ------------------------------------------------------------------ suggestions


async def test_missing_names_come_with_the_closest_existing_ones(vault: VaultHandle) -> None:
    await put_secrets(vault, {"orders_key": ORDERS, "orders_api_key": ORDERS, "stripe_key": STRIPE})
    await put_configs(vault, {"orders_host": "api.example.com", "region": "eu"})
    fields: list[FieldSpec] = [
        ("seed", "Bearer {{secret:orderskey}}", HEADER),  # the product page's example
        ("separator", "{{secret:orders-key}}", RAW),
        ("case", "{{secret:ORDERS-KEY}}", RAW),
        ("config", "{{config:order_host}}", RAW),
        ("nothing-like-it", "{{secret:zzqqxx}}", RAW),
    ]
    for role in ("admin", "viewer"):
        response = await check(vault, fields, role)
        by_field = {p.field_key: p for p in response.problems}
        assert by_field["seed"].kind == PROBLEM.PROBLEM_KIND_SECRET_NOT_FOUND
        assert by_field["seed"].severity == rpb.SEVERITY_ERROR
        assert by_field["seed"].suggestions[0] == "orders_key"
        assert "did you mean orders_key" in by_field["seed"].message
        assert by_field["separator"].suggestions[0] == "orders_key"
        assert by_field["case"].suggestions[0] == "orders_key"
        assert list(by_field["config"].suggestions) == ["orders_host"]
        assert list(by_field["nothing-like-it"].suggestions) == []
        assert all(len(p.suggestions) <= 3 for p in response.problems)
        assert "stripe_key" not in by_field["seed"].suggestions

    # A resolver learns that a name is missing, never which names exist.
    response = await check(vault, fields, "resolver")
    assert len(response.problems) == len(fields)
    for problem in response.problems:
        assert list(problem.suggestions) == []
        assert "did you mean" not in problem.message
        assert "orders_key" not in problem.message and "orders_host" not in problem.message


async def test_suggestions_take_one_query_however_many_names(vault: VaultHandle) -> None:
    await put_secrets(vault, {"orders_key": ORDERS})
    repo = vault.runtime.vault.repo
    calls: list[int] = []
    original = repo.similar_names

    async def counting(*args: object, **kwargs: object) -> dict[tuple[str, str], list[str]]:
        calls.append(1)
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    repo.similar_names = counting  # type: ignore[method-assign]
    fields = [(f"f{i}", f"{{{{secret:orderskey{i}}}}} {{{{config:c{i}}}}}", RAW) for i in range(50)]
    response = await check(vault, fields)
    assert len(response.problems) == 100
    assert calls == [1]


# ------------------------------------------------------------------- near misses

NEAR_MISSES = [
    ("{{secrets:orders_key}}", "{{secret:orders_key}}"),
    ("{{SECRET:orders_key}}", "{{secret:orders_key}}"),
    ("{{Secret:orders_key}}", "{{secret:orders_key}}"),
    ("{{input:order_id}}", "{{input.order_id}}"),
    ("{{inputs.order_id}}", "{{input.order_id}}"),
    ("{{config.host}}", "{{config:host}}"),
    ("{{configs:host}}", "{{config:host}}"),
    ("{{ secret : orders_key }}", "{{secret:orders_key}}"),
    ("{{secret.orders_key}}", "{{secret:orders_key}}"),
    ("{{Input.order_id}}", "{{input.order_id}}"),
    ("{{CONFIG:host}}", "{{config:host}}"),
]


async def test_every_near_miss_form_is_a_warning_with_its_fix(vault: VaultHandle) -> None:
    fields = [(f"f{i}", f"x {raw} y", RAW) for i, (raw, _) in enumerate(NEAR_MISSES)]
    response = await check(vault, fields)
    assert len(response.problems) == len(NEAR_MISSES)
    for problem, (raw, fix) in zip(response.problems, NEAR_MISSES, strict=True):
        assert problem.kind == PROBLEM.PROBLEM_KIND_NEAR_MISS_PLACEHOLDER, raw
        assert problem.severity == rpb.SEVERITY_WARNING
        assert problem.placeholder == raw
        assert list(problem.suggestions) == [fix]
        assert problem.offset == 2
        assert fix in problem.message
    # Valid placeholders, and literal text that looks like nothing, are not near misses.
    await put_secrets(vault, {"orders_key": ORDERS})
    clean = await check(
        vault,
        [
            (
                "ok",
                "{{secret:orders_key}} {{ input.id }} {{ secret:orders_key }} {{name}} {{x:y}}",
                RAW,
            )
        ],
    )
    assert list(clean.problems) == []


async def test_strict_resolve_refuses_near_misses_in_templates_not_in_inputs(
    vault: VaultHandle,
) -> None:
    await put_secrets(vault, {"orders_key": ORDERS})
    stub = resolver(vault)
    fields: list[FieldSpec] = [("body", "{{secret:orders_key}} {{secrets:orders_key}}", RAW)]
    # Not strict: the contract keeps such text literal.
    assert await resolve(stub, fields) == [("body", f"{ORDERS} {{{{secrets:orders_key}}}}")]
    strict = request(fields)
    strict.strict = True
    message, info = await expect_error(
        stub.ResolveTemplate(strict, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NEAR_MISS_PLACEHOLDER",
    )
    assert info.metadata["suggestion"] == "{{secret:orders_key}}"
    assert info.metadata["field"] == "body"
    assert ORDERS not in message
    # A value is never scanned: a near miss inside an input passes even in strict mode.
    from_input = request([("q", "{{input.q}}", RAW)], {"q": "{{secrets:orders_key}}"})
    from_input.strict = True
    response = await stub.ResolveTemplate(from_input, timeout=30)
    assert response.fields[0].value == "{{secrets:orders_key}}"


# ---------------------------------------------------------------- host binding


async def bind(vault: VaultHandle, name: str, value: str, hosts: Sequence[str]) -> spb.Secret:
    return await secrets_admin(vault).CreateSecret(
        spb.CreateSecretRequest(name=name, value=value, allowed_hosts=list(hosts)), timeout=30
    )


async def resolve_to(
    vault: VaultHandle, fields: Sequence[FieldSpec], destination_host: str = ""
) -> list[tuple[str, str]]:
    req = request(fields)
    req.destination_host = destination_host
    response = await resolver(vault).ResolveTemplate(req, timeout=30)
    return [(f.key, f.value) for f in response.fields]


async def refused_host(
    vault: VaultHandle, fields: Sequence[FieldSpec], destination_host: str = ""
) -> tuple[str, dict[str, str]]:
    req = request(fields)
    req.destination_host = destination_host
    message, info = await expect_error(
        resolver(vault).ResolveTemplate(req, timeout=30),
        grpc.StatusCode.PERMISSION_DENIED,
        "SECRET_HOST_NOT_ALLOWED",
    )
    assert STRIPE not in message and STRIPE not in str(info)
    metadata = dict(info.metadata)
    metadata.pop("request_id")
    return message, metadata


async def test_bound_secret_goes_to_its_hosts(vault: VaultHandle) -> None:
    secret = await bind(
        vault, "stripe_key", STRIPE, ["API.Stripe.com.", "*.Payments.Example", "bücher.example"]
    )
    assert list(secret.allowed_hosts) == [
        "*.payments.example",
        "api.stripe.com",
        "xn--bcher-kva.example",
    ]
    got = await secrets_admin(vault).GetSecret(spb.GetSecretRequest(name="stripe_key"))
    assert list(got.allowed_hosts) == list(secret.allowed_hosts)
    query = "?key={{secret:stripe_key}}"
    for url in (
        "https://api.stripe.com/v1" + query,  # exact
        "https://API.Stripe.COM/v1" + query,  # mixed case
        "https://api.stripe.com./v1" + query,  # trailing dot
        "https://api.stripe.com:8443/v1" + query,  # ports are ignored
        "https://eu.payments.example/v1" + query,  # wildcard, one label
        "https://a.b.payments.example/v1" + query,  # wildcard, two labels
        "https://BÜCHER.example/v1" + query,  # IDNA, Unicode form
        "https://xn--bcher-kva.example/v1" + query,  # IDNA, ASCII form
    ):
        [(_, value)] = await resolve_to(vault, [("url", url, URL)])
        assert value.endswith("key=" + STRIPE), url
    # A header with the request's destination given by the executor itself.
    header = [("header:Authorization", "Bearer {{secret:stripe_key}}", HEADER)]
    for host in ("api.stripe.com", "API.STRIPE.COM.", "api.stripe.com:443", "x.payments.example"):
        assert await resolve_to(vault, header, host) == [
            ("header:Authorization", f"Bearer {STRIPE}")
        ]
    # Unbound secrets are not affected: no destination needed.
    await put_secrets(vault, {"free": ORDERS})
    assert await resolve_to(vault, [("h", "{{secret:free}}", HEADER)]) == [("h", ORDERS)]


async def test_bound_secret_is_refused_on_every_other_path(vault: VaultHandle) -> None:
    await bind(vault, "stripe_key", STRIPE, ["api.stripe.com", "*.payments.example"])
    await put_configs(
        vault,
        {
            "evil_host": "evil.example",
            "evil_base": "https://evil.example",
            "good_host": "api.stripe.com",
        },
    )
    secret_q = "?key={{secret:stripe_key}}"
    # Another host; the wildcard's own suffix; a look-alike suffix.
    for url, host in (
        ("https://evil.example/v1" + secret_q, "evil.example"),
        ("https://payments.example/v1" + secret_q, "payments.example"),
        ("https://api.stripe.com.evil.example/v1" + secret_q, "api.stripe.com.evil.example"),
        ("https://evilpayments.example/v1" + secret_q, "evilpayments.example"),
    ):
        message, metadata = await refused_host(vault, [("url", url, URL)])
        assert metadata == {"names": "stripe_key", "host": host}
        assert "stripe_key" in message and host in message
    # A host from a config value (whole host, whole origin).
    for url in (
        "https://{{config:evil_host}}/v1" + secret_q,
        "{{config:evil_base}}/v1" + secret_q,
    ):
        _, metadata = await refused_host(vault, [("url", url, URL)])
        assert metadata["host"] == "evil.example"
    # ...while the right host from a config is fine.
    assert await resolve_to(vault, [("url", "https://{{config:good_host}}/v1" + secret_q, URL)])
    # No destination at all.
    header = [("header:Authorization", "Bearer {{secret:stripe_key}}", HEADER)]
    message, metadata = await refused_host(vault, header)
    assert metadata == {"names": "stripe_key", "host": ""}
    assert "names none" in message
    # A bound secret in a header or a body of a request whose URL points elsewhere.
    elsewhere = ("url", "https://evil.example/collect", URL)
    for field in (
        header[0],
        ("body", '{"key": "{{secret:stripe_key}}"}', JSON),
        ("form", "key={{secret:stripe_key}}", FORM),
    ):
        _, metadata = await refused_host(vault, [elsewhere, field])
        assert metadata["host"] == "evil.example"
    # The executor's destination must match too, even when the URL's does.
    _, metadata = await refused_host(
        vault, [("url", "https://api.stripe.com/v1" + secret_q, URL)], "evil.example"
    )
    assert metadata["host"] == "evil.example"
    # A refused resolve records the attempt and no value.
    rows = await vault.sql("SELECT outcome FROM audit_events WHERE method LIKE '%Resolve%'")
    assert any(r["outcome"] == "PERMISSION_DENIED" for r in rows)


async def test_allowed_hosts_widen_only_with_a_new_value(vault: VaultHandle) -> None:
    admin = secrets_admin(vault)
    await bind(vault, "stripe_key", STRIPE, ["*.stripe.com"])

    def update(hosts: Sequence[str] | None, value: str | None = None) -> spb.UpdateSecretRequest:
        req = spb.UpdateSecretRequest(name="stripe_key")
        if hosts is not None:
            req.allowed_hosts.hosts.extend(hosts)
            req.allowed_hosts.SetInParent()
        if value is not None:
            req.value = value
        return req

    # Narrowing needs no new value.
    narrowed = await admin.UpdateSecret(update(["api.stripe.com"]), timeout=30)
    assert list(narrowed.allowed_hosts) == ["api.stripe.com"]
    # Unset keeps the hosts.
    kept = await admin.UpdateSecret(
        spb.UpdateSecretRequest(name="stripe_key", description="d"), timeout=30
    )
    assert list(kept.allowed_hosts) == ["api.stripe.com"]
    # Widening and clearing are refused without a new value, and change nothing.
    for hosts in (["api.stripe.com", "evil.example"], ["*.stripe.com"], []):
        message, _ = await expect_error(
            admin.UpdateSecret(update(hosts), timeout=30),
            grpc.StatusCode.FAILED_PRECONDITION,
            "HOSTS_WIDEN_NEEDS_NEW_VALUE",
        )
        assert "stripe_key" in message
    still = await admin.GetSecret(spb.GetSecretRequest(name="stripe_key"))
    assert list(still.allowed_hosts) == ["api.stripe.com"]
    # With a new value in the same update, the credential may be re-pointed.
    moved = await admin.UpdateSecret(update(["api.other.example"], "sk_new_value"), timeout=30)
    assert list(moved.allowed_hosts) == ["api.other.example"]
    cleared = await admin.UpdateSecret(update([], "sk_newer_value"), timeout=30)
    assert list(cleared.allowed_hosts) == []
    # Bad entries are INVALID_ARGUMENT naming the entry's position, never stored.
    for bad in (
        ["https://api.stripe.com"],
        ["api.stripe.com:443"],
        ["a*.stripe.com"],
        ["*.10.0.0.1"],
        ["a b"],
    ):
        message, _ = await expect_error(
            admin.CreateSecret(spb.CreateSecretRequest(name="x", value="v", allowed_hosts=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert "allowed_hosts entry 1" in message
    bad_destination = request([("h", "plain", HEADER)])
    bad_destination.destination_host = "evil.example/path"
    await expect_error(
        resolver(vault).ResolveTemplate(bad_destination, timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_ip_literals_match_exactly_only(vault: VaultHandle) -> None:
    await bind(vault, "internal", ORDERS, ["10.0.0.7", "[::1]"])
    q = "?k={{secret:internal}}"
    assert await resolve_to(vault, [("u", "http://10.0.0.7:8080/x" + q, URL)])
    assert await resolve_to(vault, [("u", "http://[0:0::1]/x" + q, URL)])
    # The WHATWG parser reads 0x0a.0.0.7 as 10.0.0.7: the same destination.
    assert await resolve_to(vault, [("u", "http://0x0a.0.0.7/x" + q, URL)])
    req = request([("u", "http://10.0.0.8/x" + q, URL)])
    await expect_error(
        resolver(vault).ResolveTemplate(req, timeout=30),
        grpc.StatusCode.PERMISSION_DENIED,
        "SECRET_HOST_NOT_ALLOWED",
    )


# ---------------------------------------------------------------------- scopes


async def scoped_vault(make_vault: VaultFactory) -> tuple[VaultHandle, str]:
    token = new_token()
    vault = await make_vault(
        extra_tokens=(
            TokenEntry(
                principal="payments-exec",
                role=RESOLVER,
                sha256=hash_token(token),
                scopes=("payments_*", "shared_key"),
            ),
        )
    )
    await put_secrets(
        vault, {"payments_key": STRIPE, "shared_key": "SHARED-1", "orders_key": ORDERS}
    )
    return vault, token


async def test_a_scoped_resolver_cannot_use_another_teams_secret(make_vault: VaultFactory) -> None:
    vault, token = await scoped_vault(make_vault)
    stub = _stub(vault, token)
    assert await resolve(stub, [("a", "{{secret:PAYMENTS_KEY}} {{secret:shared_key}}", RAW)]) == [
        ("a", f"{STRIPE} SHARED-1")
    ]
    for field in (
        ("raw", "{{secret:orders_key}}", RAW),
        ("url", "https://api.example.com/o?k={{secret:orders_key}}", URL),
        ("url-path", "https://api.example.com/{{secret:orders_key}}/x", URL),
        ("header", "Bearer {{secret:orders_key}}", HEADER),
        ("json", '{"k": "{{secret:orders_key}}"}', JSON),
        ("form", "k={{secret:orders_key}}", FORM),
        ("unspecified", "{{secret:Orders_Key}}", 0),
    ):
        message, info = await expect_error(
            stub.ResolveTemplate(
                request([("ok", "{{secret:payments_key}}", RAW), field]), timeout=30
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "SECRET_NOT_ALLOWED",
        )
        assert info.metadata["names"] == "orders_key", field
        assert "orders_key" in message and "payments-exec" in message
        assert ORDERS not in message and STRIPE not in message
    # The unscoped resolver still resolves everything.
    assert await resolve(resolver(vault), [("a", "{{secret:orders_key}}", RAW)]) == [("a", ORDERS)]
    # CheckTemplate says so to the scoped resolver, as an error.
    checked = await check(
        vault, [("h", "{{secret:orders_key}} {{secret:payments_key}}", RAW)], token=token
    )
    [problem] = checked.problems
    assert problem.kind == PROBLEM.PROBLEM_KIND_SECRET_NOT_ALLOWED
    assert problem.severity == rpb.SEVERITY_ERROR
    assert problem.name == "orders_key"
    unscoped = await check(vault, [("h", "{{secret:orders_key}}", RAW)], role="resolver")
    assert list(unscoped.problems) == []


async def test_refusals_follow_the_contracts_precedence(make_vault: VaultFactory) -> None:
    """INVALID_ARGUMENT, then NOT_FOUND (secrets, then configs), then SECRET_NOT_ALLOWED,
    then SECRET_HOST_NOT_ALLOWED; nothing is opened before all of them pass."""
    vault, token = await scoped_vault(make_vault)
    await secrets_admin(vault).UpdateSecret(
        spb.UpdateSecretRequest(
            name="payments_key", value=STRIPE, allowed_hosts=spb.HostList(hosts=["api.stripe.com"])
        )
    )
    # A secret scheduled for deletion is missing to a resolve (never opened).
    await secrets_admin(vault).CreateSecret(
        spb.CreateSecretRequest(name="payments_old", value="OLD-1")
    )
    await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name="payments_old"))
    # Tamper with every stored value: any decryption would now fail with DATA_LOSS.
    await vault.sql("UPDATE secret_versions SET ciphertext = ciphertext || '\\x00'::bytea")
    stub = _stub(vault, token)
    out_of_scope = ("o", "{{secret:orders_key}}", RAW)
    wrong_host = ("u", "https://evil.example/?k={{secret:payments_key}}", URL)
    missing_secret = ("m", "{{secret:nope}}", RAW)
    missing_config = ("c", "{{config:nope}}", RAW)
    malformed = ("x", "{{secret:}}", RAW)
    deleted = ("d", "{{secret:payments_old}}", RAW)
    steps = [
        (
            [malformed, deleted, missing_secret, missing_config, out_of_scope, wrong_host],
            "INVALID_ARGUMENT",
            "MALFORMED_PLACEHOLDER",
        ),
        (
            [deleted, missing_secret, missing_config, out_of_scope, wrong_host],
            "NOT_FOUND",
            "SECRET_NOT_FOUND",
        ),
        (
            [deleted, missing_config, out_of_scope, wrong_host],
            "NOT_FOUND",
            "SECRET_DELETED",
        ),
        ([missing_config, out_of_scope, wrong_host], "NOT_FOUND", "CONFIG_NOT_FOUND"),
        ([out_of_scope, wrong_host], "PERMISSION_DENIED", "SECRET_NOT_ALLOWED"),
        ([wrong_host], "PERMISSION_DENIED", "SECRET_HOST_NOT_ALLOWED"),
        (
            [("u", "https://api.stripe.com/?k={{secret:payments_key}}", URL)],
            "DATA_LOSS",
            "SECRET_UNREADABLE",
        ),
    ]
    for fields, code, reason in steps:
        await expect_error(
            stub.ResolveTemplate(request(fields), timeout=30), grpc.StatusCode[code], reason
        )


# ------------------------------------------------------------------------ tool


async def test_tool_ids_follow_the_charset(vault: VaultHandle) -> None:
    stub = resolver(vault)
    for tool in ("payments", "github.com/org/tool:v1.2", "A", "x" * 256, ""):
        assert await resolve(stub, [("k", "plain", RAW)], tool=tool) == [("k", "plain")]
    for tool in ("-x", "a b", "x\n", "é", "x" * 257, "a;b", ".hidden"):
        message, _ = await expect_error(
            stub.ResolveTemplate(request([("k", "plain", RAW)], tool=tool), timeout=30),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_TOOL",
        )
        assert "\n" not in message
