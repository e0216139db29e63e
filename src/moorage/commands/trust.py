"""`moorage trust`: a project's signature trust policy (keys, trust stores, rules) and what it
decides for an image, through the same endpoints as /api/v1 (see `moorage.commands.api`)."""

from __future__ import annotations

import click

from moorage.commands.api import api_command
from moorage.http.api.trust import EVALUATION_PATH, KEYS_PATH, POLICIES_PATH, STORES_PATH


@click.group()
def trust() -> None:
    """Signature trust policy: which signatures an image needs before it may be pulled."""


@trust.group("key")
def key() -> None:
    """Public keys that cosign-key verifiers name."""


_KEY = f"{KEYS_PATH}/{{key}}"
api_command(key, "list", "GET", KEYS_PATH, columns=("name", "algorithm", "fingerprint"))
api_command(
    key,
    "add",
    "POST",
    KEYS_PATH,
    help="Add a public key (--pem FILE, e.g. cosign.pub) under --name.",
    done="added trust key {name} to {project}",
)
api_command(key, "show", "GET", _KEY)
api_command(key, "remove", "DELETE", _KEY, done="removed trust key {key} from {project}")


@trust.group("store")
def store() -> None:
    """Trust stores of CA certificates that Notation verifiers name."""


_STORE = f"{STORES_PATH}/{{store}}"
api_command(store, "list", "GET", STORES_PATH, columns=("name", "description", "createdBy"))
api_command(
    store,
    "add",
    "POST",
    STORES_PATH,
    help="Add a trust store of CA certificates (--certificates FILE with PEM) under --name.",
    done="added trust store {name} to {project}",
)
api_command(store, "show", "GET", _STORE)
api_command(store, "set", "PUT", _STORE, done="replaced the certificates of trust store {store}")
api_command(store, "remove", "DELETE", _STORE, done="removed trust store {store} from {project}")


@trust.group("policy")
def policy() -> None:
    """Trust rules: per repository glob, the verifiers a signature must satisfy."""


_RULE = f"{POLICIES_PATH}/{{rule:[0-9]+}}"
api_command(policy, "show", "GET", POLICIES_PATH)
api_command(
    policy,
    "add",
    "POST",
    POLICIES_PATH,
    help="Add a trust rule. Example: moorage trust policy add team --repositories 'app/**'"
    ' --mode enforce --verifiers \'[{"name": "ci", "type": "cosign-key", "keys": ["ci"]}]\'',
    done="added trust rule {result_id} to {project}",
)
api_command(
    policy,
    "replace",
    "PUT",
    POLICIES_PATH,
    help="Replace the project's trust rules with --rules JSON (or --from-file with"
    ' {"rules": [...]}); an empty list removes every rule.',
    done="replaced the trust rules of {project}",
)
api_command(policy, "rule", "GET", _RULE, help="One trust rule.")
api_command(policy, "remove", "DELETE", _RULE, done="removed trust rule {rule} from {project}")

api_command(
    trust,
    "evaluate",
    "GET",
    EVALUATION_PATH,
    help="What the trust policy decides for --repository at --digest, as a pull would.",
)
