"""Accounts and credentials: users, groups, robots, personal access tokens, sign-in back-off,
and the per-subject access facts the authorizer decides from.

Synchronous: the HTTP layer calls it on the worker threads; the CLI calls it directly.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from moorage.config import Settings
from moorage.domain.access import (
    ROLE_ACTIONS,
    Action,
    RepositoryGrant,
    SubjectAccess,
)
from moorage.domain.events import AccessEvent, Actor
from moorage.metadata.access.iam_models import Group, Robot, User
from moorage.metadata.access.iam_store import ConflictError, IamStore
from moorage.services.access.credential_admin import CredentialAdministration
from moorage.services.access.credentials import ANONYMOUS as ANONYMOUS
from moorage.services.access.credentials import (
    NAME_RE,
    expired,
    is_self,
    robot_proof,
    unknown_user_hash,
)
from moorage.services.access.credentials import IssuedSecret as IssuedSecret
from moorage.services.access.credentials import Subject as Subject
from moorage.services.access.credentials import grants_from as grants_from
from moorage.services.access.credentials import hash_password as hash_password
from moorage.services.access.credentials import hash_secret as hash_secret
from moorage.services.access.credentials import parse_permissions as parse_permissions
from moorage.services.access.credentials import password_matches as password_matches
from moorage.services.access.credentials import password_proof as password_proof
from moorage.services.access.credentials import permissions_of as permissions_of
from moorage.services.access.credentials import secret_matches as secret_matches
from moorage.services.access.credentials import with_certificate as with_certificate
from moorage.services.access.sign_in_throttle import PAT_PREFIX as PAT_PREFIX
from moorage.services.access.sign_in_throttle import Attempt, SignInThrottle, ThrottlePolicy
from moorage.services.cache import TtlCache
from moorage.services.errors import AuthenticationError as AuthenticationError
from moorage.services.errors import IdentityError
from moorage.services.errors import ThrottledError as ThrottledError
from moorage.services.events import EventBus

log = logging.getLogger("moorage.identity")

T = TypeVar("T")

_CACHE_SECONDS: Final = 2.0
# Names the audit log uses for callers that are not accounts.
_RESERVED_NAMES: Final = frozenset({"anonymous", "moorage", "system"})


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    min_password_length: int = 12
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)


def policy_from(settings: Settings) -> IdentityPolicy:
    return IdentityPolicy(
        min_password_length=settings.min_password_length,
        throttle=ThrottlePolicy(
            max_failures=settings.login_failures_per_user,
            max_failures_per_address=settings.login_failures_per_address,
        ),
    )


class IdentityService(CredentialAdministration):
    def __init__(
        self, store: IamStore, events: EventBus, policy: IdentityPolicy | None = None
    ) -> None:
        self.store = store
        self._events = events
        self.policy = policy or IdentityPolicy()
        self._access = TtlCache(_CACHE_SECONDS, name="access-facts")
        self._live = TtlCache(_CACHE_SECONDS, name="credential-liveness")
        self._projects = TtlCache(_CACHE_SECONDS, name="project-existence")
        self.throttle = SignInThrottle(store, self.policy.throttle)

    # -- events

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
        self._events.publish(AccessEvent(action, actor, result, project, resource, details or None))

    def forget_cached(self) -> None:
        """Drop this process's caches after a change it made (other workers expire in 2 s)."""
        self._access.clear()
        self._live.clear()
        self._projects.clear()

    # -- passwords

    def check_password_rules(self, password: str) -> None:
        if len(password) < self.policy.min_password_length:
            raise IdentityError(
                f"passwords need at least {self.policy.min_password_length} characters"
            )

    def bootstrap_admin(self, password: str | None) -> str | None:
        """Create `admin` on first start. Returns a generated password when none was given."""
        if self.store.user_by_name("admin") is not None:
            return None
        generated = None
        if password is None:
            generated = password = secrets.token_urlsafe(18)
        else:
            self.check_password_rules(password)
        try:
            self.store.create_user("admin", None, hash_password(password), True)
        except ConflictError:
            return None  # another process created it first
        self._emit("user:create", Actor("moorage", "system"), resource="user:admin", admin=True)
        return generated

    # -- authentication

    def authenticate(self, username: str, secret: str, client_ip: str | None) -> Subject:
        """Check a user password, a personal access token or a robot secret."""
        if secret.startswith(PAT_PREFIX):
            return self._authenticate_pat(username, secret, client_ip)
        if username.startswith("robot$"):
            return self._authenticate_robot(username, secret, client_ip)
        return self._authenticate_user(username, secret, client_ip)

    def check_not_locked(self, username: str, secret: str, client_ip: str | None) -> None:
        """Raise ThrottledError while this credential, its account or the address is locked.

        Credentials verified earlier (and cached by the HTTP layer) pass through here too, so
        a lock stops them as well."""
        self.throttle.check(Attempt(username, secret, client_ip))

    def _fail(self, attempt: Attempt, kind: str) -> AuthenticationError:
        self.throttle.failed(attempt)
        name = attempt.username or "token"
        self._emit("login", Actor(name[:255], kind, attempt.client_ip), result="failure")
        return AuthenticationError("invalid credentials")

    def _succeed(self, attempt: Attempt, subject: Subject) -> Subject:
        self.throttle.succeeded(attempt)
        self._emit(
            "login",
            subject.actor(attempt.client_ip),
            credential=subject.credential or "password",
        )
        return subject

    def _authenticate_user(self, username: str, password: str, client_ip: str | None) -> Subject:
        attempt = Attempt(username, password, client_ip)
        self.throttle.check(attempt)
        user = self.store.user_by_name(username)
        stored = user.password_hash if user is not None else unknown_user_hash()
        # Unknown users cost the same time as wrong passwords: no account enumeration.
        ok = password_matches(stored, password) and user is not None and not user.disabled
        if not ok or user is None:
            raise self._fail(attempt, "user")
        subject = Subject("user", user.id, user.username, user.is_admin, proof=password_proof(user))
        return self._succeed(attempt, subject)

    def _authenticate_robot(self, name: str, secret: str, client_ip: str | None) -> Subject:
        attempt = Attempt(name, secret, client_ip)
        self.throttle.check(attempt)
        robot = self.store.robot_by_name(name)
        ok = (
            robot is not None
            and secret_matches(secret, robot.secret_hash)
            and self._robot_usable(robot)
        )
        if not ok or robot is None:
            raise self._fail(attempt, "robot")
        self.store.touch("robot", robot.id)
        subject = Subject(
            "robot", robot.id, robot.name, credential="robot", proof=robot_proof(robot)
        )
        return self._succeed(attempt, subject)

    def _authenticate_pat(self, username: str, token: str, client_ip: str | None) -> Subject:
        attempt = Attempt(username, token, client_ip)
        self.throttle.check(attempt)
        public_id, _, secret = token[len(PAT_PREFIX) :].partition("_")
        row = self.store.pat_by_public_id(public_id) if public_id and secret else None
        user = self.store.user_by_id(row.user_id) if row is not None else None
        ok = (
            row is not None
            and user is not None
            and not user.disabled
            and (not username or username == user.username)
            and secret_matches(secret, row.secret_hash)
            and not row.revoked
            and not expired(row.expires_at)
        )
        if not ok or row is None or user is None:
            raise self._fail(attempt, "user")
        self.store.touch("pat", row.id)
        limit = grants_from(row.scopes) if row.scopes else None
        subject = Subject(
            "user",
            user.id,
            user.username,
            user.is_admin,
            limit,
            credential=f"pat:{row.name}",
            proof=f"pat:{row.id}",
        )
        return self._succeed(attempt, subject)

    @staticmethod
    def _robot_usable(robot: Robot) -> bool:
        return not robot.disabled and not expired(robot.expires_at)

    def subject_for_certificate(self, name: str, description: str) -> Subject | None:
        """The user or robot a verified client certificate maps to, if it names one."""

        def load() -> Subject | None:
            if name.startswith("robot$"):
                robot = self.store.robot_by_name(name)
                if robot is not None and self._robot_usable(robot):
                    return Subject(
                        "robot",
                        robot.id,
                        robot.name,
                        certificate=description,
                        credential="certificate",
                    )
                return None
            user = self.store.user_by_name(name)
            if user is not None and not user.disabled:
                return Subject(
                    "user",
                    user.id,
                    user.username,
                    user.is_admin,
                    certificate=description,
                    credential="certificate",
                )
            return None

        return self._live.get_or_load(("certificate", name, description), load)

    # -- what a subject may do

    def is_live_cached(self, subject: Subject) -> bool | None:
        """The cached answer of `is_live`, or None when it must be looked up."""
        if subject.kind == "anonymous":
            return True
        found, value = self._live.peek((subject.kind, subject.id, subject.name, subject.proof))
        return bool(value) if found else None

    def project_exists_cached(self, name: str) -> bool | None:
        found, value = self._projects.peek(("exists", name))
        return bool(value) if found else None

    def is_live(self, subject: Subject) -> bool:
        """Whether the account behind a token still exists and is enabled (cached 2 s)."""
        if subject.kind == "anonymous":
            return True

        def load() -> bool:
            if subject.kind == "user" and subject.id is not None:
                user = self.store.user_by_id(subject.id)
                live = user is not None and not user.disabled and user.username == subject.name
                return live and self.proof_holds(subject, user)
            if subject.kind == "robot" and subject.id is not None:
                robot = self.store.robot_by_id(subject.id)
                return (
                    robot is not None
                    and robot.name == subject.name
                    and self._robot_usable(robot)
                    and subject.proof in (None, robot_proof(robot))
                )
            return False

        return self._live.get_or_load((subject.kind, subject.id, subject.name, subject.proof), load)

    def proof_holds(self, subject: Subject, user: Any) -> bool:
        proof = subject.proof
        if proof is None:
            return True
        if proof.startswith("password:"):
            return proof == password_proof(user)
        if proof.startswith("pat:"):
            token = self.store.pat_by_id(int(proof[4:]))
            return (
                token is not None
                and token.user_id == user.id
                and not token.revoked
                and not expired(token.expires_at)
            )
        return False

    def access_of(self, subject: Subject) -> SubjectAccess:
        key = (subject.kind, subject.id, subject.limit)
        return self._access.get_or_load(key, lambda: self._load_access(subject))

    def _load_access(self, subject: Subject) -> SubjectAccess:
        if subject.kind == "anonymous" or subject.id is None:
            return SubjectAccess()
        creation = self.settings().get("project_creation", "admins")
        if subject.kind == "robot":
            robot = self.store.robot_by_id(subject.id)
            if robot is None or not self._robot_usable(robot):
                return SubjectAccess()
            grants = grants_from(robot.permissions) + self._grants([("robot", subject.id)])
            return SubjectAccess(authenticated=True, grants=grants)
        user = self.store.user_by_id(subject.id)
        if user is None or user.disabled:
            return SubjectAccess()
        principals = [("user", user.id)] + [("group", g) for g in self.store.group_ids_of(user.id)]
        roles = self.role_table()
        project_actions: dict[str, frozenset[Action]] = {}
        for project, role in self.store.memberships(principals):
            project_actions[project] = project_actions.get(project, frozenset()) | roles.get(
                role, frozenset()
            )
        return SubjectAccess(
            is_admin=user.is_admin,
            authenticated=True,
            personal=True,
            may_create_projects=creation == "authenticated",
            project_actions=project_actions,
            grants=self._grants(principals),
            limit=subject.limit,
        )

    def _grants(self, principals: list[tuple[str, int]]) -> tuple[RepositoryGrant, ...]:
        return tuple(
            RepositoryGrant(project, pattern, frozenset(Action(a) for a in actions))
            for project, pattern, actions in self.store.grants_of(principals)
        )

    def role_table(self) -> dict[str, frozenset[Action]]:
        table = {str(name): actions for name, actions in ROLE_ACTIONS.items()}
        for name, actions in self.store.custom_roles().items():
            table[name] = frozenset(Action(a) for a in actions if a in Action.__members__.values())
        return table

    def public_projects(self) -> frozenset[str]:
        return self._projects.get_or_load("public", lambda: frozenset(self.store.public_projects()))

    def project_exists(self, name: str) -> bool:
        return self._projects.get_or_load(
            ("exists", name), lambda: self.store.project_by_name(name) is not None
        )

    def settings(self) -> dict[str, Any]:
        return self._projects.get_or_load("settings", self.store.settings)

    def create_project_on_push(self, subject: Subject, project: str, client_ip: str | None) -> bool:
        """A push into a missing project creates it (private, pusher as admin) when allowed."""
        access = self.access_of(subject)
        if not (access.is_admin or access.may_create_projects) or subject.kind != "user":
            return False
        created = self.store.create_project_with_admin(project, "user", subject.id, subject.name)
        if created:
            self._emit(
                "project:create",
                subject.actor(client_ip),
                project=project,
                resource=f"project:{project}",
                public=False,
                via="push",
            )
        self.forget_cached()
        return True

    # -- users

    def create_user(
        self,
        actor: Actor,
        username: str,
        password: str,
        email: str | None = None,
        is_admin: bool = False,
    ) -> int:
        if not NAME_RE.fullmatch(username) or username.startswith("robot"):
            raise IdentityError("usernames are 1-64 lowercase letters, digits, '.', '_' or '-'")
        if username in _RESERVED_NAMES:
            raise IdentityError(f"{username!r} is reserved", 409)
        self.check_password_rules(password)
        try:
            user = self.store.create_user(username, email, hash_password(password), is_admin)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        self._emit("user:create", actor, resource=f"user:{username}", email=email, admin=is_admin)
        return user.id

    def update_user(
        self,
        actor: Actor,
        username: str,
        *,
        email: str | None = None,
        is_admin: bool | None = None,
        disabled: bool | None = None,
    ) -> None:
        user = self._user(username)
        if is_self(actor, username) and (disabled or is_admin is False):
            # Nobody locks themselves out; another administrator has to do it.
            raise IdentityError("you cannot disable your own account or drop your own admin", 409)
        changes: dict[str, Any] = {}
        if email is not None:
            changes["email"] = email
        if is_admin is not None:
            changes["is_admin"] = is_admin
        if disabled is not None:
            changes["disabled"] = disabled
        self.store.update_user(user.id, **changes)
        self.forget_cached()
        self._emit(
            "user:update", actor, resource=f"user:{username}", **{k: v for k, v in changes.items()}
        )

    def change_password(
        self, actor: Actor, username: str, new_password: str, current_password: str | None
    ) -> None:
        """Users change their own password with the current one; admins reset anyone else's."""
        user = self._user(username)
        if current_password is None and is_self(actor, username):
            # A stolen session must not be enough to take the account over for good.
            raise IdentityError("change your own password with your current password", 409)
        if current_password is not None:
            # Guessing the current password is a sign-in attempt: it shares their back-off.
            attempt = Attempt(username, "", actor.client_ip)
            self.throttle.check(attempt)
            if not password_matches(user.password_hash, current_password):
                self.throttle.failed(attempt)
                self._emit("user:password", actor, result="failure", resource=f"user:{username}")
                raise IdentityError("the current password is wrong", 403)
        self.check_password_rules(new_password)
        self.store.update_user(
            user.id,
            password_hash=hash_password(new_password),
            password_changed_at=datetime.now(UTC),
        )
        self._emit("user:password", actor, resource=f"user:{username}")

    def delete_user(self, actor: Actor, username: str) -> None:
        user = self._user(username)
        if user.username == actor.name:
            raise IdentityError("you cannot delete your own account", 409)
        self.store.delete_user(user.id)
        self.throttle.forget_account(user.username)
        self.forget_cached()
        self._emit("user:delete", actor, resource=f"user:{username}")

    def _user(self, username: str) -> User:
        user = self.store.user_by_name(username)
        if user is None:
            raise IdentityError(f"user {username} not found", 404)
        return user

    def user(self, username: str) -> User:
        return self._user(username)

    def users(self, after: str | None, limit: int) -> list[User]:
        return self.store.list_users(after, limit)

    def profile(self, subject: Subject) -> User:
        """The account of a signed-in user (robots have none)."""
        user = self.store.user_by_id(subject.id) if subject.kind == "user" and subject.id else None
        if user is None:
            raise IdentityError("only users have a profile", 404)
        return user

    # -- groups

    def create_group(self, actor: Actor, name: str) -> int:
        if not NAME_RE.fullmatch(name):
            raise IdentityError("group names are 1-64 lowercase letters, digits, '.', '_' or '-'")
        try:
            group = self.store.create_group(name)
        except ConflictError as error:
            raise IdentityError(str(error), 409) from None
        self._emit("group:create", actor, resource=f"group:{name}")
        return group.id

    def set_group_member(self, actor: Actor, group: str, username: str, member: bool) -> None:
        row = self.store.group_by_name(group)
        if row is None:
            raise IdentityError(f"group {group} not found", 404)
        user = self._user(username)
        self.store.set_group_member(row.id, user.id, member)
        self.forget_cached()
        self._emit(
            "group:member-add" if member else "group:member-remove",
            actor,
            resource=f"group:{group}",
            user=username,
        )

    def groups(self) -> list[tuple[Group, list[str]]]:
        """Every group with the usernames of its members."""
        return self.store.list_groups()

    def group(self, name: str) -> tuple[Group, list[str]]:
        for group, members in self.store.list_groups():
            if group.name == name:
                return group, members
        raise IdentityError(f"group {name} not found", 404)

    def delete_group(self, actor: Actor, name: str) -> None:
        row = self.store.group_by_name(name)
        if row is None:
            raise IdentityError(f"group {name} not found", 404)
        self.store.delete_group(row.id)
        self.forget_cached()
        self._emit("group:delete", actor, resource=f"group:{name}")
