"""The storage driver the settings name."""

from __future__ import annotations

from moorage.config import Settings
from moorage.storage.base import StorageDriver
from moorage.storage.filesystem import FilesystemStorage


def make_storage(settings: Settings) -> StorageDriver:
    if settings.storage == "s3":
        from moorage.storage.s3 import S3Options, S3Storage

        assert settings.s3_bucket is not None  # checked by the settings model
        # Without keys in the settings, boto3 reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
        # (or a profile or an instance role) itself.
        return S3Storage(
            S3Options(
                bucket=settings.s3_bucket,
                endpoint=settings.s3_endpoint,
                region=settings.s3_region,
                access_key=settings.s3_access_key,
                secret_key=settings.resolved_s3_secret_key(),
                prefix=settings.s3_prefix,
            )
        )
    return FilesystemStorage(settings.data_dir / "storage")
