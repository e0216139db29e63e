"""A promotion refuses what the source project's own pull gates refuse.

An image the source would not serve (its vulnerability policy denies it, or a trust rule in
`enforce` mode finds no valid signature) must not become pullable elsewhere by promotion: the
source's pull policies are evaluated as for a pull of each runnable image that crosses (and of
the promoted index, when it reaches one), with the source project's rules and allowlists. Each
policy that applies yields one result of kind `source-policy`; a policy that does not refuse
pulls there (none enabled, no rule, `audit` or `off` mode) yields none.

The destination may re-judge instead: a `scan` gate with `replaceSourcePolicy` replaces the
source's vulnerability policy, a `signature` gate with it the source's trust policy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from moorage.domain import mediatypes as mt
from moorage.domain.names import project_of
from moorage.domain.policy import Deny
from moorage.domain.promotion import Gate, GateKind, GateResult
from moorage.services.supply_chain.signature_policy import SignaturePolicy
from moorage.services.supply_chain.vulnerability_policy import (
    VulnerabilityPolicyCheck,
    VulnerabilityPolicyService,
)
from moorage.services.threads import Threads
from moorage.signing.trust import Mode

if TYPE_CHECKING:
    from moorage.services.staging.promotion_gates import GateSubject

log = logging.getLogger("moorage.promotion")

VULNERABILITY: Final = "source-vulnerability-policy"
SIGNATURE: Final = "source-signature-policy"
_LISTED: Final = 5
_REASON: Final = 240


def judged(subject: GateSubject) -> list[str]:
    """What a pull-time policy judges: each runnable image that crosses, and the promoted
    digest itself when it is an index that reaches one."""
    images = list(subject.images)
    top = subject.manifest
    if (
        top.digest not in images
        and top.media_type in mt.INDEXES
        and any(digest in subject.under_top for digest in images)
    ):
        images.insert(0, top.digest)
    return images


def crossing(subject: GateSubject) -> str:
    """A note on how many images were judged, when it is not just the promoted one."""
    count = len(subject.images)
    if count == 0:
        return "; no runnable image crosses"
    if subject.images == (subject.manifest.digest,):
        return ""
    return f"; {count} runnable image(s) that cross judged"


def _role(subject: GateSubject, digest: str) -> str:
    if digest == subject.manifest.digest:
        return "the promoted manifest"
    if digest in subject.under_top:
        return "reached through the index"
    return "attached (a referrer or cosign tag)"


def judged_images(subject: GateSubject, failures: Sequence[tuple[str, str]]) -> str:
    """One reason for the images that failed: as is when it is only the promoted one."""
    if len(failures) == 1 and failures[0][0] == subject.manifest.digest:
        return failures[0][1]
    listed = "; ".join(
        f"{digest} ({_role(subject, digest)}): {reason[:_REASON]}"
        for digest, reason in failures[:_LISTED]
    )
    more = f"; and {len(failures) - _LISTED} more" if len(failures) > _LISTED else ""
    return f"{len(failures)} image(s) that cross fail: {listed}{more}"


def _replaced(gates: Sequence[Gate], kind: GateKind) -> bool:
    return any(gate.kind is kind and gate.replace_source_policy for gate in gates)


class SourcePolicies:
    def __init__(
        self,
        vulnerability_gate: VulnerabilityPolicyCheck,
        vulnerability_policies: VulnerabilityPolicyService,
        signatures: SignaturePolicy,
        threads: Threads,
    ) -> None:
        self._vulnerability_gate = vulnerability_gate
        self._vulnerability_policies = vulnerability_policies
        self._signatures = signatures
        self._threads = threads

    async def evaluate(self, gates: Sequence[Gate], subject: GateSubject) -> list[GateResult]:
        targets = judged(subject)
        if not targets:
            return []
        results = []
        if not _replaced(gates, GateKind.SCAN):
            results.extend(await self._vulnerability(subject, targets))
        if not _replaced(gates, GateKind.SIGNATURE):
            results.extend(await self._trust(subject, targets))
        return results

    async def _vulnerability(self, subject: GateSubject, targets: list[str]) -> list[GateResult]:
        project = project_of(subject.source_repository)
        try:
            view = await self._threads.run(self._vulnerability_policies.policy, project)
        except Exception:
            log.exception("the vulnerability policy of %s could not be read", project)
            return [_result(VULNERABILITY, False, "the source's policy could not be read")]
        if not view.policy.enabled:
            return []
        denials: list[tuple[str, str]] = []
        for digest in targets:
            # The same decision a pull from the source gets (its rules and allowlists).
            decision = await self._vulnerability_gate.evaluate(subject.source_repository, digest)
            if isinstance(decision, Deny):
                denials.append((digest, decision.reason))
        if denials:
            reason = f"{subject.source_repository} refuses pulls of it: "
            return [_result(VULNERABILITY, False, reason + judged_images(subject, denials))]
        return [_result(VULNERABILITY, True, f"{project}'s vulnerability policy serves it")]

    async def _trust(self, subject: GateSubject, targets: list[str]) -> list[GateResult]:
        unsigned: list[tuple[str, str]] = []
        enforced = False
        for digest in targets:
            try:
                result = await self._signatures.evaluate(subject.source_repository, digest)
            except Exception:
                log.exception("the trust policy of %s could not be evaluated", digest)
                unsigned.append((digest, "its signatures could not be verified"))
                continue
            if result.rule_id is None or result.mode is not Mode.ENFORCE:
                return []  # the rule is the repository's: it does not refuse pulls there
            enforced = True
            if not result.satisfied:
                unsigned.append((digest, result.reason))
        if unsigned:
            reason = f"{subject.source_repository} refuses pulls of it: "
            return [_result(SIGNATURE, False, reason + judged_images(subject, unsigned))]
        if not enforced:
            return []
        return [_result(SIGNATURE, True, "the source's enforced trust rule is satisfied")]


def _result(name: str, passed: bool, reason: str) -> GateResult:
    return GateResult(name, GateKind.SOURCE_POLICY, passed, reason)
