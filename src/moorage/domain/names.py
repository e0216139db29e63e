"""Repository names and tags, as the distribution spec's grammar defines them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError

MAX_NAME_LENGTH: Final = 255
_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE: Final = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE: Final = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


def validate_repository_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(
            ErrorCode.NAME_INVALID, f"repository name longer than {MAX_NAME_LENGTH} characters"
        )
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(ErrorCode.NAME_INVALID, f"invalid repository name {name[:300]!r}")
    return name


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def validate_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, f"invalid tag {tag[:200]!r}")
    return tag


def project_of(name: str) -> str:
    """The first path segment of a repository name owns it (its project)."""
    return name.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest reference: exactly one of a tag or a digest."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if Digest.is_digest(text):
            return cls(digest=Digest.parse(text))
        if not is_valid_tag(text):
            raise RegistryError(ErrorCode.MANIFEST_INVALID, f"invalid reference {text[:200]!r}")
        return cls(tag=text)

    def __str__(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)


def referrers_tag(digest: Digest) -> str:
    """The referrers tag schema's fallback tag (`sha256-<hex>`)."""
    encoded = re.sub(r"[^a-zA-Z0-9._-]", "-", digest.hex[:64])
    return f"{digest.algorithm[:32]}-{encoded}"
