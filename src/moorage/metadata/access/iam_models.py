"""Identity and access tables: accounts, projects, roles, grants, robots, tokens, keys, audit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.registry.models import Base, NameString, utcnow


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(255), nullable=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # Account ids are never reused (see 0014): a row that still names a deleted account must
    # not come to mean whoever is created next.
    __table_args__ = {"sqlite_autoincrement": True}


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = {"sqlite_autoincrement": True}


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("ix_group_members_user", "user_id"),)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NameString, unique=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CustomRole(Base):
    """A named set of project actions, beside the built-in roles."""

    __tablename__ = "custom_roles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    actions: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ProjectMember(Base):
    """A user or group holding a role (built-in or custom) in a project."""

    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    principal_kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # user | group
    principal_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_project_members_principal", "principal_kind", "principal_id"),)


class RepositoryGrantRow(Base):
    """Actions for a user, group or robot on repositories matching a glob inside a project."""

    __tablename__ = "repository_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    principal_kind: Mapped[str] = mapped_column(String(16))  # user | group
    principal_id: Mapped[int] = mapped_column(Integer)
    pattern: Mapped[str] = mapped_column(String(255))
    actions: Mapped[list[str]] = mapped_column(JSON)

    __table_args__ = (Index("ix_repository_grants_principal", "principal_kind", "principal_id"),)


class ImmutableTagRuleRow(Base):
    """A project's rule of repository and tag globs whose tags may not be moved or deleted."""

    __tablename__ = "immutable_tag_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    repositories: Mapped[str] = mapped_column(String(255))  # glob, relative to the project
    tags: Mapped[str] = mapped_column(String(255))  # glob over the tag
    mode: Mapped[str] = mapped_column(String(16))  # matching | excluding
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_immutable_tag_rules_project", "project_id"),)


class ProxyUpstreamRow(Base):
    """The upstream registry a proxy-cache project pulls through (one per project).

    Secrets (password or token, client key) are stored encrypted; the API never returns them.
    """

    __tablename__ = "proxy_upstreams"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    flavor: Mapped[str] = mapped_column(String(16))  # oci | docker-hub
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    credential_kind: Mapped[str] = mapped_column(String(16))  # none | password | token
    credential: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # encrypted
    ca_bundle: Mapped[str | None] = mapped_column(Text, nullable=True)  # PEM
    client_cert: Mapped[str | None] = mapped_column(Text, nullable=True)  # PEM
    client_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # encrypted PEM
    allow_private_network: Mapped[bool] = mapped_column(Boolean, default=False)
    tag_ttl_seconds: Mapped[int] = mapped_column(Integer)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    platforms: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    anonymous_fetch: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Robot(Base):
    """A machine account with an explicit allow-list; its secret is stored only as a hash."""

    __tablename__ = "robots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(
        String(255), unique=True
    )  # robot$<project>+<name> or robot$<name>
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    description: Mapped[str | None] = mapped_column(String(255), nullable=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    permissions: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = {"sqlite_autoincrement": True}


class PersonalAccessToken(Base):
    """A user's named, scoped, expiring CLI token: `mpat_<public id>_<secret>`."""

    __tablename__ = "personal_access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[dict[str, object]] | None] = mapped_column(JSON, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_pat_user_name"),)


class RefreshToken(Base):
    """OAuth2 refresh tokens handed to docker clients; stored only as a hash.

    Each one is bound to the credential that signed in (`proof`, its `scopes` ceiling) and to
    the account's password version (`account_proof`). Redeeming one marks it used and issues
    its successor in the same `family`; presenting a used one again revokes the family.
    """

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    family: Mapped[str] = mapped_column(String(64))
    credential: Mapped[str | None] = mapped_column(String(255), nullable=True)
    proof: Mapped[str] = mapped_column(String(255))
    account_proof: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[list[dict[str, object]] | None] = mapped_column(JSON, nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_refresh_tokens_family", "family"),
        Index("ix_refresh_tokens_expires_at", "expires_at"),
    )


class SigningKey(Base):
    """Token-signing keys; retired keys verify until every token they signed has expired."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    private_pem: Mapped[bytes] = mapped_column(LargeBinary)
    public_pem: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LoginThrottle(Base):
    """Failed sign-ins per credential, account and client address, for back-off; `seen:` rows
    record where an account last signed in (see services/access/sign_in_throttle.py)."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Setting(Base):
    """Settings changed at run time through the API (the file and environment set the rest)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[object] = mapped_column(JSON)


class AuditEntry(Base):
    """Append-only, hash-chained audit log: each entry carries the hash of the previous one."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    certificate: Mapped[str | None] = mapped_column(String(512), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    project: Mapped[str | None] = mapped_column(NameString, nullable=True)
    resource: Mapped[str | None] = mapped_column(String(512), nullable=True)
    result: Mapped[str] = mapped_column(String(16))
    details: Mapped[str | None] = mapped_column(Text, nullable=True)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_project", "project", "id"),
        Index("ix_audit_log_actor", "actor", "id"),
    )


class AuditCheckpoint(Base):
    """Where retention cut the chain: the hash of the last pruned entry, signed by the registry."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    last_pruned_id: Mapped[int] = mapped_column(BigInteger)
    last_pruned_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)
