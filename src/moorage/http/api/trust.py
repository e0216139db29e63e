"""Signature trust: a project's public keys, CA trust stores, trust policy rules, and what the
policy says about an image.

Reading needs `read-project`, changing `manage-policies`; every change is audited and
increments the project's policy version. See `moorage.signing.trust` for what rules mean.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from moorage.domain.access import MAX_PATTERN_LENGTH, Action
from moorage.domain.names import project_of
from moorage.http.access import project_permission
from moorage.http.api.common import GLOB_PATTERN, PRINTABLE_PATTERN, Name, Text
from moorage.http.api.framework import (
    ApiModel,
    ApiRoute,
    Call,
    QueryModel,
    RequestModel,
    UtcDateTime,
)
from moorage.http.errors import ApiProblem
from moorage.services.supply_chain.trust import (
    RuleInput,
    TrustKeyView,
    TrustPolicyView,
    TrustRuleView,
    TrustStoreView,
)
from moorage.signing.keys import MAX_BUNDLE_LENGTH, MAX_PEM_LENGTH
from moorage.signing.notation import MAX_IDENTITY_LENGTH
from moorage.signing.trust import MAX_REFERENCES, MAX_RULES, MAX_VERIFIERS, TrustResult

TRUST = "signature-trust"
PROJECT = "/api/v1/projects/{project}"
KEYS_PATH = f"{PROJECT}/trust-keys"
STORES_PATH = f"{PROJECT}/trust-stores"
POLICIES_PATH = f"{PROJECT}/trust-policies"
EVALUATION_PATH = f"{PROJECT}/trust-evaluation"
MANAGE_POLICIES = project_permission(Action.MANAGE_POLICIES)
READ_PROJECT = project_permission(Action.READ_PROJECT)

Mode = Literal["enforce", "audit", "off"]
Require = Literal["any-of", "all-of", "at-least"]
Names = Annotated[list[Name], Field(min_length=1, max_length=MAX_REFERENCES)]
Identity = Annotated[str, Field(pattern=PRINTABLE_PATTERN, max_length=MAX_IDENTITY_LENGTH)]


# -- keys


class TrustKey(ApiModel):
    name: str
    algorithm: str = Field(description="ecdsa-p256, ecdsa-p384, ecdsa-p521, rsa-<bits>, ed25519")
    fingerprint: str = Field(description="SHA-256 of the DER SubjectPublicKeyInfo, hex")
    pem: str
    description: str | None
    created_by: str | None
    created_at: UtcDateTime


class NewTrustKey(RequestModel):
    """A public key as PEM `PUBLIC KEY` (cosign.pub); never a private key."""

    name: Name
    pem: Annotated[str, Field(min_length=1, max_length=MAX_PEM_LENGTH)]
    description: Text | None = None


def key_view(view: TrustKeyView) -> TrustKey:
    return TrustKey(
        name=view.name,
        algorithm=view.algorithm,
        fingerprint=view.fingerprint,
        pem=view.pem,
        description=view.description,
        created_by=view.created_by,
        created_at=view.created_at,
    )


async def list_trust_keys(call: Call) -> list[TrustKey]:
    return [key_view(view) for view in await call.run(call.iam.trust.keys, call.project)]


async def get_trust_key(call: Call) -> TrustKey:
    return key_view(await call.run(call.iam.trust.key, call.project, call.param("key")))


async def add_trust_key(call: Call) -> TrustKey:
    body = call.body(NewTrustKey)
    view = await call.run(
        call.iam.trust.add_key, call.actor, call.project, body.name, body.pem, body.description
    )
    return key_view(view)


async def delete_trust_key(call: Call) -> None:
    await call.run(call.iam.trust.delete_key, call.actor, call.project, call.param("key"))


# -- trust stores


class Certificate(ApiModel):
    subject: str
    fingerprint: str = Field(description="SHA-256 of the DER certificate, hex")
    not_before: UtcDateTime
    not_after: UtcDateTime


class TrustStore(ApiModel):
    name: str
    certificates: list[Certificate]
    pem: str
    description: str | None
    created_by: str | None
    created_at: UtcDateTime


class NewTrustStore(RequestModel):
    """Named root (or intermediate) CA certificates, as one PEM bundle."""

    name: Name
    certificates: Annotated[str, Field(min_length=1, max_length=MAX_BUNDLE_LENGTH)]
    description: Text | None = None


class TrustStoreCertificates(RequestModel):
    """The store's new complete set of certificates, as one PEM bundle."""

    certificates: Annotated[str, Field(min_length=1, max_length=MAX_BUNDLE_LENGTH)]


def store_view(view: TrustStoreView) -> TrustStore:
    return TrustStore(
        name=view.name,
        certificates=[
            Certificate(
                subject=c.subject,
                fingerprint=c.fingerprint,
                not_before=c.not_before,
                not_after=c.not_after,
            )
            for c in view.certificates
        ],
        pem=view.pem,
        description=view.description,
        created_by=view.created_by,
        created_at=view.created_at,
    )


async def list_trust_stores(call: Call) -> list[TrustStore]:
    return [store_view(view) for view in await call.run(call.iam.trust.stores, call.project)]


async def get_trust_store(call: Call) -> TrustStore:
    view = await call.run(call.iam.trust.trust_store, call.project, call.param("store"))
    return store_view(view)


async def add_trust_store(call: Call) -> TrustStore:
    body = call.body(NewTrustStore)
    view = await call.run(
        call.iam.trust.add_store,
        call.actor,
        call.project,
        body.name,
        body.certificates,
        body.description,
    )
    return store_view(view)


async def replace_trust_store(call: Call) -> TrustStore:
    body = call.body(TrustStoreCertificates)
    view = await call.run(
        call.iam.trust.replace_store,
        call.actor,
        call.project,
        call.param("store"),
        body.certificates,
    )
    return store_view(view)


async def delete_trust_store(call: Call) -> None:
    await call.run(call.iam.trust.delete_store, call.actor, call.project, call.param("store"))


# -- rules


class CosignKeyVerifier(RequestModel):
    """cosign signatures (legacy `.sig` tags or sigstore bundles) by one of the named keys."""

    name: Name
    type: Literal["cosign-key"]
    keys: Names


class NotationVerifier(RequestModel):
    """Notation signatures chaining to a named trust store, by a trusted identity."""

    name: Name
    type: Literal["notation"]
    trust_stores: Names
    trusted_identities: Annotated[
        list[Identity],
        Field(
            min_length=1,
            max_length=MAX_REFERENCES,
            description="`x509.subject: C=US, O=Acme, CN=Release` (the leaf's subject holds"
            " these attributes) or `*`",
        ),
    ]


Verifier = Annotated[CosignKeyVerifier | NotationVerifier, Field(discriminator="type")]


class NewTrustRule(RequestModel):
    """`require`: `any-of` one verifier, `all-of` every one, `at-least` `count` of them."""

    repositories: Annotated[
        str,
        Field(
            pattern=GLOB_PATTERN,
            max_length=MAX_PATTERN_LENGTH,
            description="repositories relative to the project; the most specific rule wins",
        ),
    ] = "**"
    mode: Mode = "enforce"
    require: Require = "any-of"
    count: Annotated[int, Field(ge=1, le=MAX_VERIFIERS)] | None = None
    verifiers: Annotated[list[Verifier], Field(max_length=MAX_VERIFIERS)]


class TrustRuleSet(RequestModel):
    """The project's complete set of rules (an empty list removes every rule)."""

    rules: Annotated[list[NewTrustRule], Field(max_length=MAX_RULES)]


class CosignKeyVerifierView(ApiModel):
    name: str
    type: Literal["cosign-key"]
    keys: list[str]


class NotationVerifierView(ApiModel):
    name: str
    type: Literal["notation"]
    trust_stores: list[str]
    trusted_identities: list[str]


VerifierView = Annotated[CosignKeyVerifierView | NotationVerifierView, Field(discriminator="type")]


class TrustRule(ApiModel):
    id: int
    repositories: str
    mode: Mode
    require: Require
    count: int | None
    verifiers: list[VerifierView]
    created_by: str | None
    created_at: UtcDateTime


class TrustPolicy(ApiModel):
    version: int = Field(description="increments on every change to keys, stores or rules")
    rules: list[TrustRule]


def _verifier_view(document: dict[str, object]) -> CosignKeyVerifierView | NotationVerifierView:
    if document.get("type") == "notation":
        return NotationVerifierView.model_validate(document)
    return CosignKeyVerifierView.model_validate(document)


def rule_view(view: TrustRuleView) -> TrustRule:
    return TrustRule.model_validate(
        {
            "id": view.id,
            "repositories": view.repositories,
            "mode": view.mode,
            "require": view.require,
            "count": view.count,
            "verifiers": [_verifier_view(dict(v)) for v in view.verifiers],
            "createdBy": view.created_by,
            "createdAt": view.created_at,
        }
    )


def policy_view(view: TrustPolicyView) -> TrustPolicy:
    return TrustPolicy(version=view.version, rules=[rule_view(rule) for rule in view.rules])


def _input(rule: NewTrustRule) -> RuleInput:
    return RuleInput(
        rule.repositories,
        rule.mode,
        rule.require,
        rule.count,
        tuple(verifier.model_dump(by_alias=True) for verifier in rule.verifiers),
    )


async def get_trust_policy(call: Call) -> TrustPolicy:
    return policy_view(await call.run(call.iam.trust.policy, call.project))


async def get_trust_rule(call: Call) -> TrustRule:
    return rule_view(await call.run(call.iam.trust.rule, call.project, call.id_param("rule")))


async def add_trust_rule(call: Call) -> TrustRule:
    body = call.body(NewTrustRule)
    view = await call.run(call.iam.trust.add_rule, call.actor, call.project, _input(body))
    return rule_view(view)


async def replace_trust_rules(call: Call) -> TrustPolicy:
    body = call.body(TrustRuleSet)
    view = await call.run(
        call.iam.trust.replace_rules,
        call.actor,
        call.project,
        [_input(rule) for rule in body.rules],
    )
    return policy_view(view)


async def delete_trust_rule(call: Call) -> None:
    await call.run(call.iam.trust.delete_rule, call.actor, call.project, call.id_param("rule"))


# -- evaluation


class EvaluationQuery(QueryModel):
    repository: Annotated[str, Field(min_length=1, max_length=255, description="full name")]
    digest: Annotated[str, Field(pattern=r"^sha(256:[0-9a-f]{64}|512:[0-9a-f]{128})$")]


class VerifierOutcome(ApiModel):
    name: str
    type: str
    satisfied: bool
    signers: list[str]
    reasons: list[str]


class TrustEvaluation(ApiModel):
    """What the trust policy decides for an image, exactly as a pull would."""

    repository: str
    digest: str
    policy_version: int
    rule: int | None
    mode: Mode
    require: Require | None
    needed: int
    satisfied: bool
    allowed: bool = Field(description="a pull would proceed (satisfied, or not enforced)")
    signed_through: str | None
    reason: str
    verifiers: list[VerifierOutcome]


def evaluation_view(result: TrustResult) -> TrustEvaluation:
    return TrustEvaluation.model_validate(
        {
            "repository": result.repository,
            "digest": result.digest,
            "policyVersion": result.policy_version,
            "rule": result.rule_id,
            "mode": str(result.mode),
            "require": str(result.requirement) if result.requirement else None,
            "needed": result.needed,
            "satisfied": result.satisfied,
            "allowed": result.allowed,
            "signedThrough": result.signed_through,
            "reason": result.reason,
            "verifiers": [
                {
                    "name": o.name,
                    "type": o.type,
                    "satisfied": o.satisfied,
                    "signers": list(o.signers),
                    "reasons": list(o.reasons),
                }
                for o in result.outcomes
            ],
        }
    )


async def evaluate_trust(call: Call) -> TrustEvaluation:
    query = call.query(EvaluationQuery)
    if project_of(query.repository) != call.project:
        raise ApiProblem(400, f"repository {query.repository} is not in project {call.project}")
    result = await call.iam.signatures.evaluate(query.repository, query.digest)
    return evaluation_view(result)


_KEY = f"{KEYS_PATH}/{{key}}"
_STORE = f"{STORES_PATH}/{{store}}"
_RULE = f"{POLICIES_PATH}/{{rule:[0-9]+}}"

ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        KEYS_PATH,
        list_trust_keys,
        READ_PROJECT,
        "The project's trust keys",
        TRUST,
        response=TrustKey,
        many=True,
    ),
    ApiRoute(
        "POST",
        KEYS_PATH,
        add_trust_key,
        MANAGE_POLICIES,
        "Add a public key that cosign-key verifiers may name",
        TRUST,
        body=NewTrustKey,
        response=TrustKey,
        status=201,
        errors=(409,),
    ),
    ApiRoute("GET", _KEY, get_trust_key, READ_PROJECT, "One trust key", TRUST, response=TrustKey),
    ApiRoute(
        "DELETE",
        _KEY,
        delete_trust_key,
        MANAGE_POLICIES,
        "Remove a trust key no rule names",
        TRUST,
        status=204,
        errors=(409,),
    ),
    ApiRoute(
        "GET",
        STORES_PATH,
        list_trust_stores,
        READ_PROJECT,
        "The project's trust stores",
        TRUST,
        response=TrustStore,
        many=True,
    ),
    ApiRoute(
        "POST",
        STORES_PATH,
        add_trust_store,
        MANAGE_POLICIES,
        "Add a trust store of CA certificates that notation verifiers may name",
        TRUST,
        body=NewTrustStore,
        response=TrustStore,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "GET", _STORE, get_trust_store, READ_PROJECT, "One trust store", TRUST, response=TrustStore
    ),
    ApiRoute(
        "PUT",
        _STORE,
        replace_trust_store,
        MANAGE_POLICIES,
        "Replace a trust store's certificates",
        TRUST,
        body=TrustStoreCertificates,
        response=TrustStore,
    ),
    ApiRoute(
        "DELETE",
        _STORE,
        delete_trust_store,
        MANAGE_POLICIES,
        "Remove a trust store no rule names",
        TRUST,
        status=204,
        errors=(409,),
    ),
    ApiRoute(
        "GET",
        POLICIES_PATH,
        get_trust_policy,
        READ_PROJECT,
        "The project's trust policy: its version and rules",
        TRUST,
        response=TrustPolicy,
    ),
    ApiRoute(
        "POST",
        POLICIES_PATH,
        add_trust_rule,
        MANAGE_POLICIES,
        f"Add a trust rule (at most {MAX_RULES} per project)",
        TRUST,
        body=NewTrustRule,
        response=TrustRule,
        status=201,
        errors=(409,),
    ),
    ApiRoute(
        "PUT",
        POLICIES_PATH,
        replace_trust_rules,
        MANAGE_POLICIES,
        "Replace the project's trust rules with the given set",
        TRUST,
        body=TrustRuleSet,
        response=TrustPolicy,
    ),
    ApiRoute(
        "GET", _RULE, get_trust_rule, READ_PROJECT, "One trust rule", TRUST, response=TrustRule
    ),
    ApiRoute(
        "DELETE",
        _RULE,
        delete_trust_rule,
        MANAGE_POLICIES,
        "Remove one trust rule",
        TRUST,
        status=204,
    ),
    ApiRoute(
        "GET",
        EVALUATION_PATH,
        evaluate_trust,
        READ_PROJECT,
        "What the trust policy decides for an image (as a pull would)",
        TRUST,
        query=EvaluationQuery,
        response=TrustEvaluation,
    ),
)
