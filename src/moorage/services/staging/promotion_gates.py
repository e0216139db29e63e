"""Evaluating a destination project's promotion gates for one image.

Every gate runs, even after one failed, so a refused promotion names every reason at once. The
scan and signature gates ask the same evaluations the pull checks use (vulnerability policy,
signature trust), with the destination's rules applied to every runnable image that crosses
(`promotion_plan`), as the source still holds it. The source project's own pull policies are
judged after the gates (`promotion_source`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from moorage.domain import mediatypes as mt
from moorage.domain.digest import Digest
from moorage.domain.events import Actor
from moorage.domain.policy import Deny
from moorage.domain.promotion import (
    Gate,
    GateKind,
    GateResult,
    age_result,
    failed,
    label_result,
    passed,
    source_stage_result,
)
from moorage.domain.vulnerability_policy import THRESHOLDS, PolicyError, VulnerabilityPolicy
from moorage.domain.vulnerability_policy import parse_severity as parse_threshold
from moorage.metadata.registry.registry_records import ManifestRecord
from moorage.metadata.registry.store import MetadataStore
from moorage.metadata.staging.promotion_store import PromotionStore
from moorage.services.access.identity import IdentityService, Subject
from moorage.services.staging.promotion_source import SourcePolicies, crossing, judged_images
from moorage.services.supply_chain.signature_policy import SignaturePolicy
from moorage.services.supply_chain.vulnerability_policy import (
    VulnerabilityPolicyCheck,
    VulnerabilityPolicyService,
)
from moorage.services.threads import Threads
from moorage.signing.trust import Mode
from moorage.storage.base import StorageDriver

log = logging.getLogger("moorage.promotion")

MAX_CONFIG_BYTES: Final = 1 << 20  # an image configuration read for its labels


@dataclass(frozen=True, slots=True)
class GateSubject:
    """The image a promotion would move, and where from and to."""

    source_repository: str
    destination_repository: str
    destination_project: str
    manifest: ManifestRecord
    requester: Actor
    source_stage: str | None
    destination_stage: str | None
    # Every runnable image that crosses (the promotion's closure), and those reached from the
    # promoted digest through index children only (its signature pins them).
    images: tuple[str, ...] = ()
    under_top: frozenset[str] = frozenset()


class GateEvaluator:
    def __init__(
        self,
        *,
        stage_order: Sequence[str],
        vulnerability_gate: VulnerabilityPolicyCheck,
        vulnerability_policies: VulnerabilityPolicyService,
        signatures: SignaturePolicy,
        identity: IdentityService,
        store: PromotionStore,
        metadata: MetadataStore,
        storage: StorageDriver,
        threads: Threads,
    ) -> None:
        self._order = tuple(stage_order)
        self._vulnerability_gate = vulnerability_gate
        self._vulnerability_policies = vulnerability_policies
        self._signatures = signatures
        self._identity = identity
        self._store = store
        self._metadata = metadata
        self._storage = storage
        self._threads = threads
        self._source = SourcePolicies(
            vulnerability_gate, vulnerability_policies, signatures, threads
        )

    async def evaluate(self, gates: Sequence[Gate], subject: GateSubject) -> list[GateResult]:
        """Every configured gate's result, then the source's own pull policies' (when they
        apply and no gate replaces them)."""
        results = []
        for gate in gates:
            try:
                results.append(await self._evaluate(gate, subject))
            except Exception:
                log.exception("promotion gate %s failed to evaluate", gate.name)
                results.append(failed(gate, "the gate could not be evaluated (an internal error)"))
        results.extend(await self._source.evaluate(gates, subject))
        return results

    async def _evaluate(self, gate: Gate, subject: GateSubject) -> GateResult:
        if gate.kind is GateKind.SCAN:
            return await self._scan(gate, subject)
        if gate.kind is GateKind.SIGNATURE:
            return await self._signature(gate, subject)
        if gate.kind is GateKind.SOURCE_STAGE:
            return source_stage_result(
                gate, self._order, subject.source_stage, subject.destination_stage
            )
        if gate.kind is GateKind.AGE:
            since = await self._threads.run(
                self._metadata.manifest_added_at,
                subject.source_repository,
                subject.manifest.digest,
            )
            return age_result(gate, since, datetime.now(UTC))
        if gate.kind is GateKind.LABEL:
            found = await self._threads.run(self._labels, subject.manifest)
            return label_result(gate, found)
        return await self._threads.run(self._approval, gate, subject)

    # -- scan

    async def _scan(self, gate: Gate, subject: GateSubject) -> GateResult:
        own = await self._threads.run(
            self._vulnerability_policies.policy, subject.destination_project
        )
        project_policy = own.policy
        if gate.severity is not None:
            try:
                severity = parse_threshold(gate.severity, THRESHOLDS, "severity")
            except PolicyError as error:
                return failed(gate, str(error))
        else:
            severity = project_policy.severity
        # Whatever the project's pull policy says about unscanned or failed scans, a scan gate
        # admits only images whose scan completed without blocking findings.
        policy = VulnerabilityPolicy(
            enabled=True,
            severity=severity,
            unknown_as=project_policy.unknown_as,
            block_unscanned=True,
            block_failed=True,
            ignore_unfixed=project_policy.ignore_unfixed,
            possibly_affected=project_policy.possibly_affected,
        )
        denials: list[tuple[str, str]] = []
        for digest in subject.images:
            decision = await self._vulnerability_gate.evaluate(
                subject.destination_repository, digest, policy, held_in=subject.source_repository
            )
            if isinstance(decision, Deny):
                denials.append((digest, decision.reason))
        if denials:
            return failed(gate, judged_images(subject, denials))
        return passed(
            gate,
            f"no finding at or above {severity.value} (allowlists applied)" + crossing(subject),
        )

    # -- signature

    async def _signature(self, gate: Gate, subject: GateSubject) -> GateResult:
        top = subject.manifest.digest
        result = await self._signatures.evaluate_as(
            subject.destination_repository, top, held_in=subject.source_repository
        )
        if result.rule_id is None:
            return failed(
                gate,
                f"no trust rule of {subject.destination_project} covers"
                f" {subject.destination_repository}: the gate has nothing to check signatures"
                " against",
            )
        if result.mode is Mode.OFF or not result.satisfied:
            return failed(gate, result.reason)
        # The promoted digest's signature pins what its index children reach; any other
        # image that crosses (a referrer, a cosign-tagged manifest) needs a signature of its own.
        unsigned: list[tuple[str, str]] = []
        for digest in subject.images:
            if digest in subject.under_top:
                continue
            own = await self._signatures.evaluate_as(
                subject.destination_repository, digest, held_in=subject.source_repository
            )
            if not own.satisfied:
                unsigned.append((digest, own.reason))
        if unsigned:
            return failed(gate, judged_images(subject, unsigned))
        return passed(gate, result.reason)

    # -- label

    def _labels(self, manifest: ManifestRecord) -> list[tuple[str, Mapping[str, str]]]:
        """(where, annotations or labels): the manifest's annotations and, for an image, its
        configuration's labels. An index is judged by its own annotations."""
        body = self._metadata.manifest_body(manifest.digest)
        document = _json_object(body)
        found: list[tuple[str, Mapping[str, str]]] = [
            ("manifest", _strings(document, "annotations"))
        ]
        if manifest.media_type in mt.INDEXES:
            return found
        config = document.get("config")
        if isinstance(config, dict):
            found.append(("image configuration", self._config_labels(config)))
        return found

    def _config_labels(self, descriptor: Mapping[str, Any]) -> Mapping[str, str]:
        digest, size = descriptor.get("digest"), descriptor.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size > MAX_CONFIG_BYTES:
            return {}
        try:
            with self._storage.open_blob(Digest.parse(digest)) as stream:
                data = stream.read(MAX_CONFIG_BYTES + 1)
        except (OSError, ValueError):
            return {}
        config = _json_object(data).get("config")
        return _strings(config, "Labels") if isinstance(config, dict) else {}

    # -- approval

    def _approval(self, gate: Gate, subject: GateSubject) -> GateResult:
        assert gate.role is not None
        assert gate.count is not None
        roles = self._identity.role_table()
        needed = roles.get(gate.role)
        if needed is None:
            return failed(gate, f"the gate names role {gate.role}, which does not exist")
        approvals = self._store.approvals(subject.destination_project, subject.manifest.digest)
        counted: list[str] = []
        passed_over: list[str] = []
        requester = subject.requester
        for approval in approvals:
            if (
                not gate.allow_requester
                and requester.kind == "user"
                and requester.id == approval.approver_id
            ):
                passed_over.append(f"{approval.approver} (the requester)")
                continue
            access = self._identity.access_of(
                Subject("user", approval.approver_id, approval.approver)
            )
            held = access.project_actions.get(subject.destination_project, frozenset())
            if access.is_admin or needed <= held:
                counted.append(approval.approver)
            else:
                passed_over.append(f"{approval.approver} (not {gate.role})")
        summary = f"{len(counted)} of {gate.count} approvals by {gate.role}s"
        if counted:
            summary += f": {', '.join(counted[:10])}"
        if passed_over:
            summary += f"; not counted: {', '.join(passed_over[:10])}"
        if len(counted) >= gate.count:
            return passed(gate, summary)
        return failed(gate, summary)


def _json_object(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        document = json.loads(data)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _strings(document: Mapping[str, Any], key: str) -> dict[str, str]:
    values = document.get(key)
    if not isinstance(values, dict):
        return {}
    return {str(k): v for k, v in values.items() if isinstance(v, str)}
