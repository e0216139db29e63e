"""One typed settings model, validated at startup.

Precedence: command-line flag > `MOORAGE_*` environment variable > TOML file > default.
Unknown keys in the file or unknown `MOORAGE_*` variables are errors that name the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "MOORAGE_"
MiB = 1 << 20
GiB = 1 << 30

# Variables that belong to the environment, not to the settings model.
_ENV_NOT_SETTINGS = frozenset(
    # the test suite's switches (backend, two-node deployment), not settings
    {"MOORAGE_CONFIG", "MOORAGE_TEST_STORAGE", "MOORAGE_TEST_CLUSTER"}
)


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = Field("127.0.0.1:5000", description="HOST:PORT to listen on")
    data_dir: Path = Field(Path("moorage-data"), description="where metadata and blobs live")
    workers: int = Field(1, ge=1, le=64, description="processes serving the same port")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default is SQLite in the data directory",
        repr=False,  # may hold a password: print masked_url(...) instead
    )
    # cross-node coordination (docs/architecture.md): none needed on one machine
    redis_url: SecretStr | None = Field(
        None, description="Redis shared by all nodes (locks, cache invalidation, schedules)"
    )
    redis_key_prefix: str = Field(
        "moorage:", min_length=1, max_length=64, description="prefix of every Redis key"
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL makes every acknowledged push durable across power loss"
    )
    max_manifest_bytes: int = Field(4 * MiB, ge=1024, le=64 * MiB)
    max_blob_bytes: int = Field(64 * GiB, ge=1)
    max_page_size: int = Field(1000, ge=1, le=100_000, description="cap on `n` for listings")
    unpaged_listing_size: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="most names a tag or catalog listing without `n` returns (a Link leads on)",
    )
    upload_expiry_seconds: int = Field(24 * 3600, ge=1)
    upload_purge_interval_seconds: int = Field(3600, ge=1)
    retention_check_seconds: float = Field(
        60.0, ge=0.5, le=3600, description="how often due retention schedules are looked for"
    )
    pull_flush_seconds: float = Field(
        5.0, ge=0.05, le=300, description="how often each process writes its pulls' times"
    )
    manifest_cache_bytes: int = Field(32 * MiB, ge=0)
    db_threads: int = Field(8, ge=1, le=256)
    shutdown_timeout_seconds: float = Field(30.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: one escaped line per record; json: one JSON object per line",
    )
    access_log: bool = False

    # identity and access
    admin_password: SecretStr | None = Field(
        None, description="initial password of `admin` on first start (else one is generated)"
    )
    admin_password_file: Path | None = None
    public_url: str | None = Field(
        None, description="external base URL (for token realms); default: from the request"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) of load balancers whose X-Forwarded-For names"
        " the client (sign-in throttling, audit); in the environment: comma-separated",
    )
    auth_service: str = Field("moorage", description="token service name (`aud` of tokens)")
    token_ttl_seconds: int = Field(300, ge=30, le=3600)
    v2_basic_auth: bool = Field(False, description="also accept Basic credentials on /v2")
    min_password_length: int = Field(12, ge=8, le=128)
    login_failures_per_user: int = Field(5, ge=1, le=1000, description="then the account backs off")
    login_failures_per_address: int = Field(
        20, ge=1, le=100_000, description="then the client address backs off"
    )
    refresh_token_days: int = Field(
        30, ge=1, le=365, description="how long a refresh token family lives after sign-in"
    )
    refresh_token_rotation: bool = Field(
        True,
        description="every use of a refresh token returns a new one and using one twice revokes"
        " its family (off: for clients that keep the first one, like Docker Engine)",
    )
    audit_retention_days: int = Field(0, ge=0, description="0 keeps audit entries forever")
    vulndb_public_key: Path | None = Field(
        None,
        description="PEM public key (Ed25519, ECDSA P-256 or RSA) that vulnerability database"
        " bundles are signed with; a signed bundle is then verified",
    )
    vulndb_require_signature: bool = Field(
        False, description="import only bundles signed with vulndb_public_key"
    )
    vulndb_max_upload_bytes: int = Field(
        4 * GiB, ge=MiB, description="largest vulnerability database file the API accepts"
    )
    scan_concurrency: int = Field(
        1,
        ge=0,
        le=64,
        description="image scans run at once by the process that runs background jobs (0: this"
        " node runs no scans; another node sharing the database does)",
    )
    vulndb_cache_dir: Path | None = Field(
        None,
        description="this node's cache of vulnerability database files (fetched from the shared"
        " storage); default: <data_dir>/vulndb",
    )
    vulndb_poll_seconds: float = Field(
        30.0,
        ge=0.1,
        le=86_400,
        description="how often to look for a newly imported vulnerability database generation",
    )
    scan_lease_seconds: int = Field(
        300,
        ge=5,
        le=86_400,
        description="a scan job whose worker stopped renewing it this long is run again",
    )
    scan_max_attempts: int = Field(
        3, ge=1, le=100, description="runs of one scan job before it ends in Error"
    )
    scanner_timeout_seconds: int = Field(
        900,
        ge=5,
        le=86_400,
        description="how long one scan by an external scanner adapter may take, polling included",
    )

    # replication
    replication_concurrency: int = Field(
        2,
        ge=0,
        le=64,
        description="replication tasks run at once by a process that runs background jobs (0:"
        " this node runs none; another node sharing the database does)",
    )
    replication_lease_seconds: int = Field(
        300, ge=5, le=86_400, description="a task whose worker stopped renewing it is run again"
    )
    replication_max_attempts: int = Field(
        5, ge=1, le=100, description="attempts of one replication task before it fails"
    )
    replication_retry_base_seconds: float = Field(
        30.0, ge=0.1, le=86_400, description="back-off after a first failed attempt (doubles)"
    )
    replication_retry_max_seconds: float = Field(
        3600.0, ge=0.1, le=7 * 86_400, description="longest back-off between two attempts"
    )
    replication_chunk_bytes: int = Field(
        64 * MiB,
        ge=MiB,
        le=GiB,
        description="blobs larger than this are pushed in chunks of this size",
    )

    # quotas (a project's own limits, set through the API or `moorage quota set`, win)
    quota_default_bytes: int = Field(
        0, ge=0, description="storage quota of every project, in bytes (0: unlimited)"
    )
    quota_default_artifacts: int = Field(
        0, ge=0, description="artifact (manifest) quota of every project (0: unlimited)"
    )
    quota_warning_percent: int = Field(
        80, ge=1, le=100, description="usage at which a project's quota warning is announced"
    )

    # staged registries and promotion
    stages: list[str] = Field(
        default_factory=lambda: ["dev", "staging", "prod"],
        description="project stage labels in promotion order (the source-stage gate admits only"
        " the immediately preceding stage); in the environment: comma-separated",
    )
    promotion_break_glass: bool = Field(
        False,
        description="let system administrators push directly into promotion-only projects"
        " (each such push is audited as promotion:break-glass)",
    )

    # transparent mirror mode
    mirror_project: str | None = Field(
        None,
        max_length=255,
        description="proxy-cache project that serves pulls of names without a project prefix"
        " (Docker registry-mirrors, containerd hosts.toml); PUT /api/v1/mirror overrides it",
    )

    # TLS and mutual TLS
    tls_cert: Path | None = Field(None, description="PEM certificate chain; enables HTTPS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle for client certificates")
    tls_client_auth: Literal["none", "optional", "required"] = "none"
    tls_client_identity: Literal["none", "cn", "san-email", "san-dns", "san-uri"] = Field(
        "none", description="map a verified client certificate to the user or robot it names"
    )

    # blob storage (see docs/deployment.md); S3 keys are never logged
    storage: Literal["filesystem", "s3"] = Field(
        "filesystem", description="filesystem: the data directory; s3: an S3-compatible bucket"
    )
    s3_bucket: str | None = None
    s3_endpoint: str | None = Field(None, description="e.g. https://minio.internal:9000")
    s3_region: str = "us-east-1"
    s3_access_key: str | None = Field(None, description="default: AWS_ACCESS_KEY_ID")
    s3_secret_key: SecretStr | None = Field(None, description="default: AWS_SECRET_ACCESS_KEY")
    s3_secret_key_file: Path | None = None
    s3_prefix: str = Field("", description="key prefix inside the bucket")
    s3_redirect: bool = Field(False, description="answer blob GETs with 307 to presigned URLs")
    s3_presign_seconds: int = Field(300, ge=10, le=7 * 24 * 3600)

    # garbage collection (docs/lifecycle.md)
    gc_grace_seconds: int = Field(
        3600,
        ge=1,
        le=30 * 24 * 3600,
        description="blobs, links and untagged manifests younger than this are never collected;"
        " keep it above the longest push (upload to manifest) your clients make",
    )
    gc_schedule: str | None = Field(
        None,
        max_length=100,
        description="cron (UTC, 5 fields) at which garbage collection runs; unset: only on request",
    )
    gc_delete_untagged: bool = Field(
        False, description="scheduled runs also delete untagged manifests older than the grace"
    )
    gc_batch_size: int = Field(250, ge=1, le=10_000)
    gc_delete_workers: int = Field(4, ge=1, le=64)
    gc_lease_seconds: int = Field(
        60, ge=5, le=3600, description="a run whose node stops beating this long is taken over"
    )

    @field_validator("gc_schedule")
    @classmethod
    def _check_gc_schedule(cls, value: str | None) -> str | None:
        if value:
            from moorage.domain.replication import RuleError, parse_cron

            try:
                parse_cron(value)
            except RuleError as error:
                raise ValueError(str(error)) from None
        return value or None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _split_stages(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, value: list[str]) -> list[str]:
        from moorage.domain.promotion import StageError, validate_stage_order

        try:
            return validate_stage_order(value)
        except StageError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_auth != "none" and (self.tls_client_ca is None or self.tls_cert is None):
            raise ValueError("client certificate authentication needs tls_cert and tls_client_ca")
        return self

    @model_validator(mode="after")
    def _check_vulndb(self) -> Settings:
        if self.vulndb_require_signature and self.vulndb_public_key is None:
            raise ValueError("vulndb_require_signature needs vulndb_public_key")
        if self.vulndb_public_key is not None:
            # Checked here so a bad key stops `serve` with a message, not on the first import.
            from moorage.vulnerability.bundle import BundleError, load_public_key

            try:
                load_public_key(self.vulndb_public_key.read_bytes())
            except OSError as error:
                raise ValueError(f"cannot read vulndb_public_key: {error}") from None
            except BundleError as error:
                raise ValueError(f"vulndb_public_key: {error}") from None
        return self

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage = s3 needs s3_bucket")
        return self

    def resolved_s3_secret_key(self) -> str | None:
        if self.s3_secret_key is not None:
            return self.s3_secret_key.get_secret_value()
        if self.s3_secret_key_file is not None:
            try:
                return self.s3_secret_key_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read s3_secret_key_file: {exc}") from None
        return None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def initial_admin_password(self) -> str | None:
        if self.admin_password is not None:
            return self.admin_password.get_secret_value()
        if self.admin_password_file is not None:
            try:
                return self.admin_password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read admin_password_file: {exc}") from None
        return None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+pysqlite:///{self.data_dir / 'moorage.db'}"


def load_settings(
    config_file: Path | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build settings from flags, environment, an optional TOML file and defaults."""
    environ = dict(os.environ if environ is None else environ)
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX) and key not in known | _ENV_NOT_SETTINGS
    )
    if unknown:
        raise ConfigError(f"unknown setting in the environment: {', '.join(unknown)}")

    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from None
        unknown_keys = sorted(set(file_values) - set(Settings.model_fields))
        if unknown_keys:
            raise ConfigError(f"unknown setting in {config_file}: {', '.join(unknown_keys)}")

    merged: dict[str, Any] = dict(file_values)
    merged.update(
        {key[len(ENV_PREFIX) :].lower(): value for key, value in environ.items() if key in known}
    )
    merged.update({key: value for key, value in (flags or {}).items() if value is not None})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
