"""Robots and personal access tokens: creating, re-scoping, rotating and revoking them, under
the one rule that nobody grants more than they hold. Mixed into `IdentityService`, which
provides the store, the caches and the events.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from moorage.domain.access import Action, SubjectAccess, holds_all, robot_full_name
from moorage.domain.events import Actor
from moorage.metadata.access.iam_models import PersonalAccessToken, Robot, User
from moorage.metadata.access.iam_store import ConflictError, IamStore
from moorage.services.access.credentials import (
    NAME_RE,
    IssuedSecret,
    Subject,
    grants_from,
    hash_secret,
    parse_permissions,
)
from moorage.services.access.sign_in_throttle import PAT_PREFIX
from moorage.services.errors import IdentityError


class CredentialAdministration:
    """The robot and token verbs of `IdentityService` (which defines what is declared here)."""

    store: IamStore

    def _emit(
        self,
        action: str,
        actor: Actor,
        *,
        result: str = "success",
        project: str | None = None,
        resource: str | None = None,
        **details: object,
    ) -> None:
        raise NotImplementedError

    def forget_cached(self) -> None:
        raise NotImplementedError

    def access_of(self, subject: Subject) -> SubjectAccess:
        raise NotImplementedError

    def _user(self, username: str) -> User:
        raise NotImplementedError

    # -- robots

    def assert_may_grant(
        self, grantor: Subject | None, project: str | None, actions: Iterable[str]
    ) -> None:
        """Nobody hands out more than they hold: each action must be the grantor's own in
        `project` (system robots: administrators only). `None` is the command line, acting as
        the system on the host."""
        if grantor is None:
            return
        access = self.access_of(grantor)
        wanted = {Action(a) for a in actions}
        if holds_all(access, project, wanted):
            return
        if project is None:
            raise IdentityError("only administrators grant access across projects", 403)
        missing = sorted(a.value for a in wanted if not holds_all(access, project, (a,)))
        raise IdentityError(
            f"this needs {', '.join(missing)} in {project}, which you do not hold: nobody grants"
            " or changes more than they hold",
            403,
        )

    def robot_holdings(self, robot: Robot) -> set[str]:
        """Every action a robot holds: its allow-list and any grants made to it."""
        held = {action for item in grants_from(robot.permissions) for action in item.actions}
        for _project, _pattern, actions in self.store.grants_of([("robot", robot.id)]):
            held.update(Action(action) for action in actions)
        return {action.value for action in held}

    def create_robot(
        self,
        actor: Actor,
        name: str,
        permissions: Sequence[dict[str, Any]],
        project: str | None,
        expires_in_days: int | None,
        description: str | None = None,
        *,
        grantor: Subject | None = None,
    ) -> IssuedSecret:
        if not NAME_RE.fullmatch(name):
            raise IdentityError("robot names are 1-64 lowercase letters, digits, '.', '_' or '-'")
        project_row = None
        if project is not None:
            project_row = self.store.project_by_name(project)
            if project_row is None:
                raise IdentityError(f"project {project} not found", 404)
        cleaned = parse_permissions(permissions, project=project)
        self.assert_may_grant(grantor, project, (a for p in cleaned for a in p["actions"]))
        full_name = robot_full_name(name, project)
        secret = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            robot = self.store.create_robot(
                Robot(
                    name=full_name,
                    project_id=project_row.id if project_row else None,
                    description=description,
                    secret_hash=hash_secret(secret),
                    permissions=cleaned,
                    expires_at=expires,
                    disabled=False,
                    created_by=actor.name,
                )
            )
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        self._emit(
            "robot:create",
            actor,
            project=project,
            resource=f"robot:{full_name}",
            permissions=cleaned,
            expires_at=expires.isoformat() if expires else None,
        )
        return IssuedSecret(full_name, secret, robot.id)

    def robots(self, project: str | None) -> list[Robot]:
        """The robots of a project, or the system robots when `project` is None."""
        project_id = None
        if project is not None:
            row = self.store.project_by_name(project)
            if row is None:
                raise IdentityError(f"project {project} not found", 404)
            project_id = row.id
        return self.store.list_robots(project_id)

    def robot(self, full_name: str, project: str | None) -> Robot:
        robot = self.store.robot_by_name(full_name)
        project_row = self.store.project_by_name(project) if project else None
        if robot is None or robot.project_id != (project_row.id if project_row else None):
            raise IdentityError(f"robot {full_name} not found", 404)
        return robot

    def update_robot(
        self,
        actor: Actor,
        full_name: str,
        project: str | None,
        *,
        disabled: bool | None = None,
        permissions: Sequence[dict[str, Any]] | None = None,
        grantor: Subject | None = None,
    ) -> None:
        robot = self.robot(full_name, project)
        changes: dict[str, Any] = {}
        held = self.robot_holdings(robot)
        if disabled is not None:
            changes["disabled"] = disabled
        if permissions is not None:
            cleaned = parse_permissions(permissions, project=project)
            held.update(a for p in cleaned for a in p["actions"])
            changes["permissions"] = cleaned
        self.assert_may_grant(grantor, project, held)
        self.store.update_robot(robot.id, **changes)
        self.forget_cached()
        self._emit("robot:update", actor, project=project, resource=f"robot:{full_name}", **changes)

    def rotate_robot(
        self,
        actor: Actor,
        full_name: str,
        project: str | None,
        *,
        grantor: Subject | None = None,
    ) -> IssuedSecret:
        """A new secret: whoever receives it holds everything the robot holds."""
        robot = self.robot(full_name, project)
        self.assert_may_grant(grantor, project, self.robot_holdings(robot))
        secret = secrets.token_urlsafe(32)
        self.store.update_robot(robot.id, secret_hash=hash_secret(secret))
        self._emit("robot:rotate", actor, project=project, resource=f"robot:{full_name}")
        return IssuedSecret(full_name, secret, robot.id)

    def delete_robot(
        self,
        actor: Actor,
        full_name: str,
        project: str | None,
        *,
        grantor: Subject | None = None,
    ) -> None:
        robot = self.robot(full_name, project)
        self.assert_may_grant(grantor, project, self.robot_holdings(robot))
        self.store.delete_robot(robot.id)
        self.forget_cached()
        self._emit("robot:delete", actor, project=project, resource=f"robot:{full_name}")

    # -- personal access tokens

    def create_token(
        self,
        actor: Actor,
        username: str,
        name: str,
        scopes: Sequence[dict[str, Any]] | None,
        expires_in_days: int | None,
    ) -> IssuedSecret:
        user = self._user(username)
        if not NAME_RE.fullmatch(name):
            raise IdentityError("token names are 1-64 lowercase letters, digits, '.', '_' or '-'")
        cleaned = parse_permissions(scopes, project=None) if scopes else None
        public_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            row = self.store.create_pat(
                PersonalAccessToken(
                    public_id=public_id,
                    user_id=user.id,
                    name=name,
                    secret_hash=hash_secret(secret),
                    scopes=cleaned,
                    expires_at=expires,
                    revoked=False,
                )
            )
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        self._emit(
            "token:create",
            actor,
            resource=f"token:{username}/{name}",
            scopes=cleaned,
            expires_at=expires.isoformat() if expires else None,
        )
        return IssuedSecret(name, f"{PAT_PREFIX}{public_id}_{secret}", row.id)

    def tokens(self, username: str) -> list[PersonalAccessToken]:
        return self.store.list_pats(self._user(username).id)

    def revoke_token(self, actor: Actor, username: str, name: str) -> None:
        user = self._user(username)
        for row in self.store.list_pats(user.id):
            if row.name == name:
                self.store.update_pat(row.id, revoked=True)
                self.forget_cached()
                self._emit("token:revoke", actor, resource=f"token:{username}/{name}")
                return
        raise IdentityError(f"token {name} not found", 404)
