"""`moorage vuln-policy`, `moorage allowlist` and `moorage immutable-tags`: the pull and push
policies of projects, through the same endpoints as /api/v1 (see `moorage.commands.api`)."""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.immutable_tags import RULES_PATH
from moorage.http.api.vulnerability_policy import (
    POLICY_PATH,
    PROJECT_ALLOWLIST_PATH,
    SYSTEM_ALLOWLIST_PATH,
)


@click.group("vuln-policy")
def vuln_policy() -> None:
    """A project's vulnerability policy: which images may be pulled given their scan."""


api_command(vuln_policy, "show", "GET", POLICY_PATH)
api_command(
    vuln_policy,
    "set",
    "PUT",
    POLICY_PATH,
    help="Set the project's complete vulnerability policy; options left out take their"
    " defaults (severity High, nothing else blocked). Example: moorage vuln-policy set team"
    " --enabled --severity Critical --block-unscanned",
    done="set the vulnerability policy of {project}",
)


@click.group()
def allowlist() -> None:
    """Accepted vulnerabilities: system-wide, or per project (the *-project commands)."""


_ENTRY = "{entry:[0-9]+}"
api_command(
    allowlist,
    "list",
    "GET",
    SYSTEM_ALLOWLIST_PATH,
    help="The system-wide allowlist; see `allowlist list-project` for a project's.",
    columns=("id", "vulnerabilityId", "owner", "reason", "expiresAt", "expired"),
)
api_command(
    allowlist,
    "list-project",
    "GET",
    PROJECT_ALLOWLIST_PATH,
    help="A project's allowlist (expired entries included, marked).",
    columns=("id", "vulnerabilityId", "owner", "reason", "expiresAt", "expired"),
)
api_command(
    allowlist,
    "add",
    "POST",
    SYSTEM_ALLOWLIST_PATH,
    help="Allow a vulnerability (an id or alias, e.g. CVE-2024-3094) in every project until"
    " --expires-at. Example: moorage allowlist add --vulnerability-id CVE-2024-3094"
    " --reason 'not reachable' --owner security@example.org --expires-at 2027-01-01T00:00:00Z",
    done="allowed {vulnerability_id} in every project (entry {result_id})",
)
api_command(
    allowlist,
    "add-project",
    "POST",
    PROJECT_ALLOWLIST_PATH,
    help="Allow a vulnerability in one project's images until --expires-at.",
    done="allowed {vulnerability_id} in {project} (entry {result_id})",
)
api_command(
    allowlist,
    "remove",
    "DELETE",
    f"{SYSTEM_ALLOWLIST_PATH}/{_ENTRY}",
    done="removed entry {entry} from the system-wide allowlist",
)
api_command(
    allowlist,
    "remove-project",
    "DELETE",
    f"{PROJECT_ALLOWLIST_PATH}/{_ENTRY}",
    done="removed entry {entry} from the allowlist of {project}",
)


@click.group("immutable-tags")
def immutable_tags() -> None:
    """Immutable tag rules: tags that may not be moved or deleted once pushed."""


api_command(
    immutable_tags,
    "list",
    "GET",
    RULES_PATH,
    columns=("id", "repositories", "tags", "mode", "createdBy"),
)
api_command(
    immutable_tags,
    "add",
    "POST",
    RULES_PATH,
    help="Protect the tags matching --tags in repositories matching --repositories (relative"
    " to the project, default **); --mode excluding exempts them instead. Example: moorage"
    " immutable-tags add team --repositories 'app/**' --tags 'v*'",
    done="added immutable tag rule {result_id} to {project}",
)
api_command(
    immutable_tags,
    "replace",
    "PUT",
    RULES_PATH,
    help='Replace the project\'s rules with --rules \'[{"tags": "v*"}, ...]\' (or --from-file'
    ' with {"rules": [...]}); an empty list removes every rule.',
    done="replaced the immutable tag rules of {project}",
    columns=("id", "repositories", "tags", "mode", "createdBy"),
)
api_command(
    immutable_tags,
    "remove",
    "DELETE",
    f"{RULES_PATH}/{{rule:[0-9]+}}",
    done="removed immutable tag rule {rule} from {project}",
)
