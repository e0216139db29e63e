"""Docker token scopes: `repository:<name>:<actions>` and `registry:catalog:*`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from moorage.domain.errors import RegistryError
from moorage.domain.names import validate_repository_name

REPOSITORY_ACTIONS: Final = ("pull", "push", "delete")
MAX_SCOPES: Final = 32


class ScopeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Scope:
    type: str  # repository | registry
    name: str
    actions: frozenset[str]

    def render(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


def parse_scopes(values: list[str]) -> list[Scope]:
    """Parse `scope` parameters (repeated, or space-separated as OAuth2 sends them)."""
    items = [item for value in values for item in value.split(" ") if item]
    if len(items) > MAX_SCOPES:
        raise ScopeError(f"at most {MAX_SCOPES} scopes per token")
    scopes: list[Scope] = []
    for item in items:
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        kind = kind.split("(", 1)[0]  # "repository(plugin)" is a repository
        if not name:
            raise ScopeError(f"malformed scope {item[:200]!r}")
        wanted = frozenset(a for a in actions.split(",") if a)
        if kind == "repository":
            try:
                validate_repository_name(name)
            except RegistryError:
                raise ScopeError(f"invalid repository name in scope {item[:200]!r}") from None
            if "*" in wanted:
                wanted = frozenset(REPOSITORY_ACTIONS)
            wanted = wanted & frozenset(REPOSITORY_ACTIONS)
        elif kind == "registry" and name == "catalog":
            wanted = frozenset({"*"})
        else:
            continue  # unknown resource types get nothing, which is not an error
        scopes.append(Scope(kind, name, wanted))
    return scopes
