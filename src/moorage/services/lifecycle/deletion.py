"""Deleting repositories and projects with everything in them.

Only metadata is removed (see `moorage.metadata.lifecycle.deletion_store`); the next garbage
collection frees the bytes nothing references any more, so a blob another repository shares
stays readable there. Each deleted repository emits one `repository:deleted` event (audited).

A promotion-only project only changes through promotions, so deleting in it is refused, unless
`promotion_break_glass` is on and a system administrator (or the host's operator, on the command
line) asks; that deletion is audited as `promotion:break-glass` first.

A repository holding an immutable tag is not deleted (409, audited as `policy:denied`), as its
manifests could not be one by one; the tags are read in the deletion's own transaction. A
project's deletion removes its immutable-tag rules with it: whoever may delete the project
administers those rules anyway.

Blocking: call from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from moorage.domain.access import SystemAction, decide_system
from moorage.domain.errors import RegistryError
from moorage.domain.events import AccessEvent, Actor, EventKind, RegistryEvent, policy_denied
from moorage.domain.immutability import protected_tags
from moorage.domain.names import project_of, validate_repository_name
from moorage.metadata.lifecycle.deletion_store import DeletedRepository, DeletionStore
from moorage.services.access.credentials import Subject
from moorage.services.access.identity import IdentityService
from moorage.services.access.projects import ProjectService
from moorage.services.cache import clear_all_caches
from moorage.services.errors import IdentityError
from moorage.services.events import EventBus
from moorage.services.registry.immutability import POLICY_NAME as IMMUTABLE_TAGS_POLICY
from moorage.services.registry.immutability import ImmutabilityService
from moorage.services.staging.stages import StageService


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProjectDeletion:
    name: str
    repositories: list[DeletedRepository]


class DeletionService:
    def __init__(
        self,
        store: DeletionStore,
        projects: ProjectService,
        stages: StageService,
        identity: IdentityService,
        immutability: ImmutabilityService,
        events: EventBus,
        *,
        break_glass: bool,
    ) -> None:
        self._store = store
        self._projects = projects
        self._stages = stages
        self._identity = identity
        self._immutability = immutability
        self._events = events
        self._break_glass = break_glass

    def delete_repository(
        self, actor: Actor, subject: Subject | None, name: str
    ) -> DeletedRepository:
        """Delete one repository; `subject` None: the host's operator (the command line)."""
        try:
            validate_repository_name(name)
        except RegistryError:
            raise IdentityError(f"repository {name[:300]} not found", 404) from None
        project = project_of(name)
        self._allow_in(actor, subject, project, name)
        rules = self._immutability.rules_of(project)

        def refuse_immutable(tags: list[str]) -> None:
            protected = protected_tags(rules, name, tags)
            if protected:
                tag, rule = protected[0]
                more = f" (and {len(protected) - 1} more)" if len(protected) > 1 else ""
                raise _Refused(
                    f"tag {tag}{more} of {name} is immutable ({rule.describe()}); the"
                    " repository cannot be deleted while it holds immutable tags"
                )

        try:
            deleted = self._store.delete_repository(name, check=refuse_immutable if rules else None)
        except _Refused as refused:
            # Published once the transaction is undone, as every event is after its change.
            self._events.publish(
                policy_denied(
                    actor,
                    project,
                    name,
                    point="delete:repository",
                    policy=IMMUTABLE_TAGS_POLICY,
                    reason=refused.reason,
                )
            )
            raise IdentityError(refused.reason, 409) from None
        if deleted is None:
            raise IdentityError(f"repository {name} not found", 404)
        self._announce(actor, deleted)
        return deleted

    def delete_project(self, actor: Actor, subject: Subject | None, name: str) -> ProjectDeletion:
        """Delete a project, every repository in it, and what the project held (members,
        grants, robots, policies, proxy-cache and virtual configuration)."""
        self._projects.project(name)  # 404 before anything else
        self._allow_in(actor, subject, name, f"project:{name}")
        deleted = self._delete_repositories(actor, name)
        self._projects.delete(actor, name)
        # Its virtual or proxy-cache configuration, stage and rules are cached per worker.
        clear_all_caches()
        # A push authorized before the project went may have re-created a repository since
        # the sweep: sweep once more, unless the project has been created anew meanwhile.
        if not self._project_exists(name):
            deleted += self._delete_repositories(actor, name)
        return ProjectDeletion(name, deleted)

    def _delete_repositories(self, actor: Actor, project: str) -> list[DeletedRepository]:
        deleted: list[DeletedRepository] = []
        for repository in self._store.repositories_of(project):
            gone = self._store.delete_repository(repository)
            if gone is not None:
                self._announce(actor, gone)
                deleted.append(gone)
        return deleted

    def _project_exists(self, name: str) -> bool:
        try:
            self._projects.project(name)
        except IdentityError:
            return False
        return True

    def _announce(self, actor: Actor, deleted: DeletedRepository) -> None:
        self._events.publish(RegistryEvent(EventKind.REPOSITORY_DELETED, deleted.name, actor=actor))

    def _allow_in(self, actor: Actor, subject: Subject | None, project: str, resource: str) -> None:
        """Refuse (409) a deletion in a promotion-only project, unless break-glass lets the
        caller through; that is audited before anything is deleted."""
        stage = self._stages.stage_of(project)
        if stage is None or not stage.promotion_only:
            return
        if not (self._break_glass and self._is_administrator(subject)):
            raise IdentityError(
                f"project {project} is promotion-only: its content changes only through"
                " promotions (a system administrator may delete with promotion_break_glass on)",
                409,
            )
        self._events.publish(
            AccessEvent(
                "promotion:break-glass",
                actor,
                "success",
                project,
                resource,
                {"operation": "delete"},
            )
        )

    def _is_administrator(self, subject: Subject | None) -> bool:
        if subject is None:
            return True  # the host's operator, as every management command
        if subject.kind != "user":
            return False
        return decide_system(self._identity.access_of(subject), SystemAction.ADMIN)
