"""Trust policies: which signatures an image must carry, and deciding whether it does.

A project's policy is a set of **rules**. Each rule covers repositories by a glob relative to the
project (`prod/**`), has a **mode** (`enforce`: pulls of images that fail are denied; `audit`:
they are allowed and reported; `off`: nothing is checked), a list of named **verifiers** and a
**requirement** over them: `any-of` (one verifier satisfied), `all-of` (every one), or
`at-least` N distinct verifiers.

**The most specific rule covering a repository decides alone** (rules do not combine):

1. a rule without wildcards that names the repository exactly;
2. else the rule with the longest literal prefix (the text before its first `*` or `?`);
3. then the one with fewer wildcards, then the longer pattern, then the older rule (lower id).

A repository no rule covers has no signature requirement.

Verifier types (the registry `VERIFIERS` maps a type to the function that checks it, so a
keyless verifier is one more entry):

- `cosign-key`: cosign signatures made with one of the named public keys, legacy
  (`sha256-<hex>.sig` tag, simple-signing payload) or sigstore bundle referrers (message
  signature or DSSE statement). Bundles carrying a Fulcio certificate (keyless) are reported as
  unsupported verification material.
- `notation`: Notary Project JWS signatures whose chain leads to a root of the named trust
  stores, with the leaf's subject matching one of the trusted identities (`*` for any).

Evaluation never raises on bad signature material: every signature that does not count says
why, and the result carries those reasons per verifier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from cryptography import x509

from moorage.domain.access import PatternError, glob_match, validate_pattern
from moorage.signing import cosign, notation, sigstore_bundle
from moorage.signing.encoding import FormatError
from moorage.signing.keys import KeyInfo

MAX_RULES: Final = 32  # per project
MAX_VERIFIERS: Final = 8  # per rule
MAX_REFERENCES: Final = 16  # keys, trust stores or identities per verifier
MAX_NAME_LENGTH: Final = 64
_MAX_REASONS: Final = 8  # per verifier outcome
_MAX_DETAILS: Final = 2000  # characters of reasons in a denial (it goes to clients and the log)


class Mode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"
    OFF = "off"


class Requirement(StrEnum):
    ANY_OF = "any-of"
    ALL_OF = "all-of"
    AT_LEAST = "at-least"


class PolicyError(ValueError):
    """A rule that cannot be accepted (the message says why)."""


@dataclass(frozen=True, slots=True)
class CosignKeyVerifier:
    name: str
    keys: tuple[str, ...]  # names of the project's trust keys
    type: str = "cosign-key"


@dataclass(frozen=True, slots=True)
class NotationVerifier:
    name: str
    trust_stores: tuple[str, ...]  # names of the project's trust stores
    trusted_identities: tuple[str, ...]  # "x509.subject: C=.., O=.., CN=.." or "*"
    type: str = "notation"


VerifierSpec = CosignKeyVerifier | NotationVerifier


@dataclass(frozen=True, slots=True)
class TrustRule:
    id: int | None
    repositories: str  # doublestar glob relative to the project
    mode: Mode
    require: Requirement
    count: int | None  # N for at-least
    verifiers: tuple[VerifierSpec, ...]

    @property
    def needed(self) -> int:
        """How many distinct verifiers must be satisfied."""
        if self.require is Requirement.ALL_OF:
            return len(self.verifiers)
        if self.require is Requirement.AT_LEAST:
            return self.count or 1
        return 1

    def describe(self) -> str:
        name = f"rule {self.id}" if self.id is not None else "a rule"
        return f"{name} (repositories {self.repositories!r})"


# -- rules


def _literal_prefix(pattern: str) -> str:
    for position, character in enumerate(pattern):
        if character in "*?":
            return pattern[:position]
    return pattern


def specificity(rule: TrustRule) -> tuple[bool, int, int, int, int]:
    """Larger is more specific (see the module docstring for the order)."""
    pattern = rule.repositories
    prefix = _literal_prefix(pattern)
    wildcards = sum(pattern.count(c) for c in "*?")
    return (
        prefix == pattern,
        len(prefix),
        -wildcards,
        len(pattern),
        -(rule.id if rule.id is not None else 0),
    )


def select_rule(rules: Iterable[TrustRule], relative_repository: str) -> TrustRule | None:
    """The most specific rule covering the repository's path inside its project."""
    covering = [rule for rule in rules if glob_match(rule.repositories, relative_repository)]
    return max(covering, key=specificity, default=None)


def make_rule(
    repositories: str,
    mode: str,
    require: str,
    count: int | None,
    verifiers: Sequence[VerifierSpec],
    rule_id: int | None = None,
) -> TrustRule:
    """A validated rule (references to keys and stores are checked by `check_references`)."""
    try:
        validate_pattern(repositories)
    except PatternError as error:
        raise PolicyError(str(error)) from None
    try:
        parsed_mode, requirement = Mode(mode), Requirement(require)
    except ValueError:
        raise PolicyError(
            "mode is enforce, audit or off; require is any-of, all-of or at-least"
        ) from None
    if not verifiers and parsed_mode is not Mode.OFF:
        raise PolicyError("a rule that is not 'off' names at least one verifier")
    if len(verifiers) > MAX_VERIFIERS:
        raise PolicyError(f"a rule has at most {MAX_VERIFIERS} verifiers")
    names = [verifier.name for verifier in verifiers]
    if len(set(names)) != len(names):
        raise PolicyError("verifier names must differ within a rule")
    if requirement is Requirement.AT_LEAST:
        if count is None or not 1 <= count <= len(verifiers):
            raise PolicyError("'at-least' needs a count between 1 and the number of verifiers")
    elif count is not None:
        raise PolicyError("a count is only given with 'at-least'")
    for verifier in verifiers:
        _validate_verifier(verifier)
    return TrustRule(rule_id, repositories, parsed_mode, requirement, count, tuple(verifiers))


def _validate_verifier(verifier: VerifierSpec) -> None:
    if not verifier.name or len(verifier.name) > MAX_NAME_LENGTH:
        raise PolicyError(f"a verifier's name has 1 to {MAX_NAME_LENGTH} characters")
    if isinstance(verifier, CosignKeyVerifier):
        references = verifier.keys
    else:
        references = verifier.trust_stores
        if not verifier.trusted_identities or len(verifier.trusted_identities) > MAX_REFERENCES:
            raise PolicyError(f"verifier {verifier.name}: 1 to {MAX_REFERENCES} trusted identities")
        for identity in verifier.trusted_identities:
            try:
                notation.parse_identity(identity)
            except ValueError as error:
                raise PolicyError(f"verifier {verifier.name}: {error}") from None
    if not references or len(references) > MAX_REFERENCES:
        raise PolicyError(
            f"verifier {verifier.name} names 1 to {MAX_REFERENCES} "
            + ("keys" if isinstance(verifier, CosignKeyVerifier) else "trust stores")
        )
    if len(set(references)) != len(references):
        raise PolicyError(f"verifier {verifier.name} names the same key or store twice")


def check_references(rule: TrustRule, keys: Iterable[str], stores: Iterable[str]) -> None:
    """Every key and trust store the rule names exists in the project."""
    known_keys, known_stores = set(keys), set(stores)
    for verifier in rule.verifiers:
        if isinstance(verifier, CosignKeyVerifier):
            missing = [name for name in verifier.keys if name not in known_keys]
            what = "key"
        else:
            missing = [name for name in verifier.trust_stores if name not in known_stores]
            what = "trust store"
        if missing:
            raise PolicyError(f"verifier {verifier.name}: the project has no {what} {missing[0]}")


def validate_rule_set(rules: Sequence[TrustRule]) -> None:
    if len(rules) > MAX_RULES:
        raise PolicyError(f"a project has at most {MAX_RULES} trust rules")
    patterns = [rule.repositories for rule in rules]
    if len(set(patterns)) != len(patterns):
        raise PolicyError("two rules cover the same repositories pattern")


def verifier_to_dict(verifier: VerifierSpec) -> dict[str, Any]:
    if isinstance(verifier, CosignKeyVerifier):
        return {"name": verifier.name, "type": verifier.type, "keys": list(verifier.keys)}
    return {
        "name": verifier.name,
        "type": verifier.type,
        "trustStores": list(verifier.trust_stores),
        "trustedIdentities": list(verifier.trusted_identities),
    }


def verifier_from_dict(document: Mapping[str, Any]) -> VerifierSpec:
    """A stored (or submitted) verifier; PolicyError for an unknown type or a bad shape."""

    def names(key: str) -> tuple[str, ...]:
        value = document.get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise PolicyError(f"a {kind} verifier lists {key}")
        return tuple(value)

    kind, name = document.get("type"), document.get("name")
    if not isinstance(name, str):
        raise PolicyError("a verifier has a name")
    if kind == "cosign-key":
        return CosignKeyVerifier(name, names("keys"))
    if kind == "notation":
        return NotationVerifier(name, names("trustStores"), names("trustedIdentities"))
    raise PolicyError(f"verifier type {str(kind)[:40]!r} is not supported")


# -- what is verified


class SignatureKind(StrEnum):
    COSIGN_LEGACY = "cosign"  # a layer of a `sha256-<hex>.sig` manifest
    SIGSTORE_BUNDLE = "sigstore-bundle"  # a referrer holding a bundle
    NOTATION = "notation"  # a referrer holding a JWS (or COSE) envelope


@dataclass(frozen=True, slots=True)
class FoundSignature:
    """One signature found for an image, with its content as read from the registry."""

    kind: SignatureKind
    source: str  # the digest of the manifest that holds it
    content: bytes | None  # payload, bundle or envelope; None when it could not be read
    media_type: str = ""
    legacy: cosign.LegacyLayer | None = None
    problem: str | None = None  # why the content could not be read

    @property
    def label(self) -> str:
        where = self.legacy.digest if self.legacy is not None else self.source
        return f"{self.kind} signature {where[:19]}…"


@dataclass(frozen=True, slots=True)
class Subject:
    """The image whose signatures are checked: what Notation's target must equal."""

    repository: str
    digest: str
    media_type: str
    size: int
    manifest: bytes | None = None  # the manifest's bytes (message signatures over them)


@dataclass(frozen=True, slots=True)
class TrustMaterial:
    keys: Mapping[str, KeyInfo] = field(default_factory=dict)
    stores: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifierOutcome:
    name: str
    type: str
    satisfied: bool
    signers: tuple[str, ...]  # key names or certificate subjects whose signature counted
    reasons: tuple[str, ...]  # why signatures did not count (empty when satisfied)
    # When a satisfied outcome stops holding by itself (a certificate or the signature expires).
    valid_until: datetime | None = None

    def describe(self) -> str:
        if self.satisfied:
            return f"{self.type} verifier {self.name}: signed by {', '.join(self.signers)}"
        why = "; ".join(self.reasons) or "no signature found"
        return f"{self.type} verifier {self.name}: {why}"


@dataclass(frozen=True, slots=True)
class TrustResult:
    """What the trust policy says about one image: the one answer the pull check and the
    promotion gate share."""

    repository: str
    digest: str
    policy_version: int
    mode: Mode  # OFF when no rule covers the repository
    rule_id: int | None
    rule_repositories: str | None
    requirement: Requirement | None
    needed: int
    outcomes: tuple[VerifierOutcome, ...]
    satisfied: bool
    signed_through: str | None = None  # the index whose signatures satisfied the policy
    valid_until: datetime | None = None  # decide again from then on (expiring certificates)

    @property
    def allowed(self) -> bool:
        """Whether a pull may proceed: satisfied, or not enforced."""
        return self.satisfied or self.mode is not Mode.ENFORCE

    @property
    def reason(self) -> str:
        if self.rule_id is None:
            return f"no trust rule covers {self.repository}"
        rule = f"trust rule {self.rule_id} (repositories {self.rule_repositories!r})"
        if self.mode is Mode.OFF:
            return f"{rule} is off"
        met = sum(outcome.satisfied for outcome in self.outcomes)
        if self.satisfied:
            through = f" through index {self.signed_through}" if self.signed_through else ""
            return f"{self.digest} satisfies {rule}{through}"
        details = "; ".join(o.describe() for o in self.outcomes if not o.satisfied)
        if len(details) > _MAX_DETAILS:
            details = details[: _MAX_DETAILS - 1] + "…"
        return (
            f"{self.digest} of {self.repository} is not signed as {rule} requires"
            f" ({self.requirement} {self.needed} of {len(self.outcomes)} verifiers, {met}"
            f" satisfied): {details}"
        )


# -- verifiers

VerifierFunction = Callable[
    [Any, Subject, Sequence[FoundSignature], TrustMaterial, datetime], VerifierOutcome
]


def _outcome(
    spec: VerifierSpec,
    signers: list[str],
    reasons: list[str],
    valid_until: datetime | None = None,
) -> VerifierOutcome:
    unique_reasons = tuple(dict.fromkeys(reasons))[:_MAX_REASONS]
    return VerifierOutcome(
        spec.name,
        spec.type,
        bool(signers),
        tuple(dict.fromkeys(signers)),
        unique_reasons,
        valid_until if signers else None,
    )


def verify_cosign_key(
    spec: CosignKeyVerifier,
    subject: Subject,
    signatures: Sequence[FoundSignature],
    material: TrustMaterial,
    _now: datetime,
) -> VerifierOutcome:
    keys = [(name, material.keys[name]) for name in spec.keys if name in material.keys]
    signers: list[str] = []
    reasons: list[str] = []
    relevant = [
        s
        for s in signatures
        if s.kind in (SignatureKind.COSIGN_LEGACY, SignatureKind.SIGSTORE_BUNDLE)
    ]
    if not relevant:
        return _outcome(spec, [], ["no cosign signature found (no .sig tag, no sigstore bundle)"])
    key_names = ", ".join(spec.keys)
    for signature in relevant:
        if signature.content is None:
            reasons.append(f"{signature.label}: {signature.problem or 'unreadable'}")
            continue
        if signature.kind is SignatureKind.COSIGN_LEGACY:
            problem, signer = _legacy(signature, subject, keys)
        else:
            problem, signer = _bundle(signature, subject, keys)
        if signer is not None:
            signers.append(signer)
        else:
            reasons.append(f"{signature.label}: {problem or f'does not verify with {key_names}'}")
    return _outcome(spec, signers, [] if signers else reasons)


def _legacy(
    signature: FoundSignature, subject: Subject, keys: Sequence[tuple[str, KeyInfo]]
) -> tuple[str | None, str | None]:
    layer, payload = signature.legacy, signature.content
    if layer is None or payload is None:
        return "the signature could not be read", None
    problem = cosign.check_payload(layer, payload, subject.digest)
    if problem is not None:
        return problem, None
    for name, info in keys:
        if cosign.check_signature(layer, payload, info.key):
            return None, name
    if layer.has_certificate:
        return "signed with a certificate (keyless), which is not supported yet", None
    return None, None


def _bundle(
    signature: FoundSignature, subject: Subject, keys: Sequence[tuple[str, KeyInfo]]
) -> tuple[str | None, str | None]:
    assert signature.content is not None
    try:
        bundle = sigstore_bundle.parse_bundle(signature.content)
    except FormatError as error:
        return str(error), None
    if bundle.material is not sigstore_bundle.Material.PUBLIC_KEY:
        return (
            f"unsupported verification material ({bundle.material}): keyless signatures are"
            " not supported yet",
            None,
        )
    problem = sigstore_bundle.check_content(bundle, subject.digest)
    if problem is not None:
        return problem, None
    for name, info in keys:
        if sigstore_bundle.check_signature(bundle, info.key, subject.manifest):
            return None, name
    return None, None


def verify_notation(
    spec: NotationVerifier,
    subject: Subject,
    signatures: Sequence[FoundSignature],
    material: TrustMaterial,
    now: datetime,
) -> VerifierOutcome:
    roots = [cert for name in spec.trust_stores for cert in material.stores.get(name, ())]
    identities = [notation.parse_identity(identity) for identity in spec.trusted_identities]
    signers: list[str] = []
    reasons: list[str] = []
    ends: list[datetime] = []
    relevant = [s for s in signatures if s.kind is SignatureKind.NOTATION]
    if not relevant:
        return _outcome(spec, [], ["no Notation signature found"])
    for signature in relevant:
        if signature.content is None:
            reasons.append(f"{signature.label}: {signature.problem or 'unreadable'}")
            continue
        if signature.media_type != notation.JWS_MEDIA_TYPE:
            reasons.append(
                f"{signature.label}: {signature.media_type[:60]} envelopes are not supported"
            )
            continue
        problem, signer, ends_at = _notation(signature.content, subject, roots, identities, now)
        if signer is not None and ends_at is not None:
            signers.append(signer)
            ends.append(ends_at)
        else:
            reasons.append(f"{signature.label}: {problem}")
    # One good signature is enough: the outcome holds as long as the longest-lived one.
    return _outcome(spec, signers, [] if signers else reasons, max(ends, default=None))


def _notation(
    content: bytes,
    subject: Subject,
    roots: Sequence[x509.Certificate],
    identities: Sequence[tuple[tuple[str, str], ...] | None],
    now: datetime,
) -> tuple[str | None, str | None, datetime | None]:
    """(why it does not count, None, None) or (None, signer, when it stops counting)."""
    try:
        envelope = notation.parse_envelope(content)
        header = notation.check_header(envelope.protected)
    except FormatError as error:
        return str(error), None, None
    problem = (
        notation.check_signature(envelope)
        or notation.check_target(envelope.payload, subject.digest, subject.media_type, subject.size)
        or _expired(header, now)
        or notation.check_chain(envelope, roots, header, now)
    )
    if problem is not None:
        return problem, None, None
    if not any(notation.identity_matches(identity, envelope.chain[0]) for identity in identities):
        return f"signer {notation.leaf_subject(envelope)} is not a trusted identity", None, None
    ends = [certificate.not_valid_after_utc for certificate in envelope.chain]
    if header.expiry is not None:
        ends.append(header.expiry)
    return None, notation.leaf_subject(envelope), min(ends)


def _expired(header: notation.Header, now: datetime) -> str | None:
    if header.expiry is not None and now > header.expiry:
        return f"the signature expired at {header.expiry.isoformat()}"
    if header.signing_time > now:
        return "the signing time is in the future"
    return None


VERIFIERS: Final[dict[str, VerifierFunction]] = {
    "cosign-key": verify_cosign_key,
    "notation": verify_notation,
}


def evaluate_rule(
    rule: TrustRule,
    subject: Subject,
    signatures: Sequence[FoundSignature],
    material: TrustMaterial,
    now: datetime,
    policy_version: int,
) -> TrustResult:
    outcomes: tuple[VerifierOutcome, ...] = ()
    satisfied = True
    if rule.mode is not Mode.OFF:
        outcomes = tuple(
            VERIFIERS[spec.type](spec, subject, signatures, material, now)
            for spec in rule.verifiers
        )
        satisfied = sum(outcome.satisfied for outcome in outcomes) >= rule.needed
    ends = [outcome.valid_until for outcome in outcomes if outcome.valid_until is not None]
    return TrustResult(
        subject.repository,
        subject.digest,
        policy_version,
        rule.mode,
        rule.id,
        rule.repositories,
        rule.require,
        rule.needed,
        outcomes,
        satisfied,
        valid_until=min(ends, default=None),
    )


def no_rule(repository: str, digest: str, policy_version: int) -> TrustResult:
    return TrustResult(repository, digest, policy_version, Mode.OFF, None, None, None, 0, (), True)
