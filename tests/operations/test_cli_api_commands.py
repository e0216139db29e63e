"""The management commands that run the REST API's endpoints in-process (`moorage vuln-policy`,
`trust`, `stage`, `replication`, `mirror`, ...), driven as the installed `moorage` program: the
API's JSON with `--output json`, a table otherwise, the API's refusals on standard error with
exit status 1 and nothing changed, audit entries naming the host's operator, and a running
server that acts on what they changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api import eventually
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USER, RegistryAuth
from tests.support.oci import assert_oci_error, push_image
from tests.support.server import RegistryProcess, command_environment

DIGEST = "sha256:" + "a" * 64


class Moorage:
    """`moorage ARGS --data-dir DIR` as a child process, as an operator runs it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = command_environment(data_dir)
        self.env["COLUMNS"] = "200"  # rich wraps narrower tables; keep cells on one line

    def run(
        self, *args: str, stdin: str | None = None, code: int = 0
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "moorage", *args, "--data-dir", str(self.data_dir)],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done

    def out(self, *args: str, stdin: str | None = None) -> str:
        return self.run(*args, stdin=stdin).stdout

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self.out(*args, "--output", "json", stdin=stdin))

    def refused(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        """Run a command that must be refused; its problem document (from --output json)."""
        done = self.run(*args, "--output", "json", stdin=stdin, code=1)
        assert done.stdout == ""
        problem = json.loads(done.stderr)
        assert isinstance(problem, dict)
        return problem

    def refused_text(self, *args: str) -> str:
        done = self.run(*args, code=1)
        assert done.stdout == ""
        return done.stderr

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out("audit", "export").splitlines()]


@pytest.fixture
def moorage(tmp_path: Path) -> Moorage:
    return Moorage(tmp_path / "data")


def field_messages(problem: dict[str, Any]) -> dict[str, str]:
    return {item["field"]: item["message"] for item in problem.get("errors", [])}


def test_vulnerability_policy_commands(moorage: Moorage) -> None:
    moorage.run("project", "create", "team")
    default = moorage.json("vuln-policy", "show", "team")
    assert default == {
        "enabled": False,
        "severity": "High",
        "unknownAs": "Unknown",
        "blockUnscanned": False,
        "blockFailed": False,
        "ignoreUnfixed": False,
        "possiblyAffected": "finding",
        "updatedBy": None,
        "updatedAt": None,
    }

    changed = moorage.run(
        "vuln-policy",
        "set",
        "team",
        "--enabled",
        "--severity",
        "Critical",
        "--block-unscanned",
        "--possibly-affected",
        "block",
    ).stdout
    assert changed.splitlines()[0] == "set the vulnerability policy of team"
    assert "severity" in changed
    assert "Critical" in changed
    policy = moorage.json("vuln-policy", "show", "team")
    assert policy["severity"] == "Critical"
    assert policy["blockUnscanned"] is True
    assert policy["possiblyAffected"] == "block"
    assert policy["updatedBy"]  # the operating-system account, "cli" without one

    bad = moorage.refused("vuln-policy", "set", "team", "--enabled", "--severity", "Severe")
    assert bad["status"] == 422
    assert "'Low', 'Medium', 'High' or 'Critical'" in field_messages(bad)["severity"]
    maybe = moorage.refused("vuln-policy", "set", "team", "--possibly-affected", "sometimes")
    assert maybe["status"] == 422
    assert "possiblyAffected" in field_messages(maybe)
    unknown = moorage.refused("vuln-policy", "set", "nope", "--enabled")
    assert unknown == {"status": 404, "detail": "project nope not found"}
    assert "Error: project nope not found" in moorage.refused_text(
        "vuln-policy", "set", "nope", "--enabled"
    )
    assert moorage.json("vuln-policy", "show", "team") == policy

    entries = [e for e in moorage.audit() if e["action"] == "vulnerability-policy:update"]
    assert len(entries) == 1  # the refused changes left no entry
    assert entries[0]["actorKind"] == "system"
    assert entries[0]["actor"] == policy["updatedBy"]
    assert entries[0]["project"] == "team"


def test_allowlist_commands(moorage: Moorage, tmp_path: Path) -> None:
    moorage.run("project", "create", "team")
    added = moorage.json(
        "allowlist",
        "add-project",
        "team",
        "--vulnerability-id",
        "CVE-2024-3094",
        "--reason",
        "not reachable",
        "--owner",
        "security@example.org",
        "--expires-at",
        "2999-01-01T00:00:00Z",
    )
    assert added["scope"] == "project"
    assert added["project"] == "team"
    assert added["expired"] is False
    listed = moorage.json("allowlist", "list-project", "team")
    assert [entry["vulnerabilityId"] for entry in listed] == ["CVE-2024-3094"]
    table = moorage.out("allowlist", "list-project", "team")
    assert "vulnerabilityId" in table
    assert "CVE-2024-3094" in table

    body = tmp_path / "entry.json"
    body.write_text(json.dumps({"vulnerabilityId": "not an id!", "reason": "r", "owner": "o"}))
    bad_id = moorage.refused("allowlist", "add", "--from-file", str(body))
    assert "vulnerabilityId" in field_messages(bad_id)
    body.write_text(json.dumps({"vulnerabilityId": "CVE-1", "reason": "r", "owner": "o", "x": 1}))
    extra = moorage.refused("allowlist", "add", "--from-file", str(body))
    assert field_messages(extra) == {"x": "Extra inputs are not permitted"}
    no_time_zone = moorage.refused(
        "allowlist",
        "add",
        "--vulnerability-id",
        "CVE-2024-1",
        "--reason",
        "r",
        "--owner",
        "o",
        "--expires-at",
        "2999-01-01T00:00:00",
    )
    assert "expiresAt" in field_messages(no_time_zone)
    assert moorage.json("allowlist", "list") == []

    removed = moorage.out("allowlist", "remove-project", "team", str(added["id"]))
    assert removed.strip() == f"removed entry {added['id']} from the allowlist of team"
    assert moorage.json("allowlist", "list-project", "team") == []
    assert moorage.refused("allowlist", "remove-project", "team", "999")["status"] == 404


def test_immutable_tag_commands(moorage: Moorage) -> None:
    moorage.run("project", "create", "team")
    rule = moorage.json("immutable-tags", "add", "team", "--repositories", "app/**", "--tags", "v*")
    assert {k: rule[k] for k in ("repositories", "tags", "mode")} == {
        "repositories": "app/**",
        "tags": "v*",
        "mode": "matching",
    }
    assert "tags" in field_messages(
        moorage.refused("immutable-tags", "add", "team", "--tags", "v[")
    )
    assert "mode" in field_messages(
        moorage.refused("immutable-tags", "add", "team", "--tags", "v*", "--mode", "sometimes")
    )
    replaced = moorage.refused(
        "immutable-tags", "replace", "team", "--rules", '[{"tags": "x*", "colour": "red"}]'
    )
    assert field_messages(replaced) == {"rules.0.colour": "Extra inputs are not permitted"}
    assert (
        "not valid JSON"
        in moorage.refused("immutable-tags", "replace", "team", "--rules", "[")["detail"]
    )
    assert moorage.refused("immutable-tags", "list", "nope")["status"] == 404
    assert [r["id"] for r in moorage.json("immutable-tags", "list", "team")] == [rule["id"]]

    table = moorage.out("immutable-tags", "list", "team")
    assert "repositories" in table.splitlines()[1]
    assert "app/**" in table
    moorage.run("immutable-tags", "remove", "team", str(rule["id"]))
    assert moorage.json("immutable-tags", "list", "team") == []
    actions = [entry["action"] for entry in moorage.audit()]
    assert actions == ["project:create", "immutable-rule:create", "immutable-rule:delete"]


def _public_key_pem(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_trust_commands(moorage: Moorage, tmp_path: Path) -> None:
    moorage.run("project", "create", "team")
    pem = _public_key_pem(tmp_path / "cosign.pub")
    key = moorage.json("trust", "key", "add", "team", "--name", "ci", "--pem", str(pem))
    assert key["name"] == "ci"
    assert key["algorithm"] == "ecdsa-p256"
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert moorage.refused(
        "trust", "key", "add", "team", "--name", "x", "--pem", str(not_a_key)
    ) == {"status": 422, "detail": "the PEM block is not a valid public key"}

    verifiers = '[{"name": "ci", "type": "cosign-key", "keys": ["ci"]}]'
    rule = moorage.json(
        "trust", "policy", "add", "team", "--repositories", "app/**", "--verifiers", verifiers
    )
    assert rule["mode"] == "enforce"
    missing_key = moorage.refused(
        "trust",
        "policy",
        "add",
        "team",
        "--verifiers",
        '[{"name": "x", "type": "cosign-key", "keys": ["nope"]}]',
    )
    assert "nope" in missing_key["detail"]
    policy = moorage.json("trust", "policy", "show", "team")
    assert [r["id"] for r in policy["rules"]] == [rule["id"]]
    in_use = moorage.refused("trust", "key", "remove", "team", "ci")
    assert in_use == {
        "status": 409,
        "detail": f"key ci is named by trust rule(s) {rule['id']}; change those rules first",
    }
    assert moorage.json("trust", "key", "list", "team")[0]["name"] == "ci"
    moorage.run("trust", "policy", "remove", "team", str(rule["id"]))
    moorage.run("trust", "key", "remove", "team", "ci")
    assert moorage.json("trust", "key", "list", "team") == []
    actions = [entry["action"] for entry in moorage.audit()]
    for action in ("trust-key:add", "trust-rule:create", "trust-rule:delete", "trust-key:delete"):
        assert action in actions


def test_stage_and_gate_commands(moorage: Moorage) -> None:
    moorage.run("project", "create", "prod-team")
    stage = moorage.json("stage", "set", "prod-team", "--stage", "prod", "--promotion-only")
    assert stage["stage"] == "prod"
    assert stage["promotionOnly"] is True
    assert "stage" in field_messages(
        moorage.refused("stage", "set", "prod-team", "--stage", "Not A Stage")
    )
    assert moorage.json("stage", "show", "prod-team") == stage
    assert moorage.refused("stage", "set", "nope", "--stage", "dev")["status"] == 404

    gates = (
        '[{"kind": "scan", "severity": "High"},'
        ' {"kind": "approval", "count": 2, "role": "maintainer"}]'
    )
    no_role = moorage.refused(
        "gates", "set", "prod-team", "--gates", '[{"kind": "approval", "count": 2}]'
    )
    assert no_role == {
        "status": 422,
        "detail": "an approval gate needs the role its approvers hold",
    }
    result = moorage.json("gates", "set", "prod-team", "--gates", gates)
    assert [gate["kind"] for gate in result["gates"]] == ["scan", "approval"]
    bad = moorage.refused("gates", "set", "prod-team", "--gates", '[{"kind": "scan", "count": 2}]')
    assert bad == {"status": 422, "detail": "a scan gate has no count"}
    assert moorage.json("gates", "show", "prod-team")["gates"] == result["gates"]
    assert moorage.json("promotions", "list") == []
    assert "promotionOnly" in moorage.out("stage", "show", "prod-team")


def test_proxy_mirror_and_virtual_commands(moorage: Moorage) -> None:
    for name in ("team", "hub", "all"):
        moorage.run("project", "create", name)
    proxy = moorage.json(
        "proxy",
        "set",
        "hub",
        "--url",
        "http://127.0.0.1:9/",
        "--allow-private-network",
        "--username",
        "puller",
        "--password-stdin",
        stdin="upstream-secret\n",
    )
    assert proxy["credential"] == "password"
    assert "upstream-secret" not in json.dumps(moorage.json("proxy", "show", "hub"))
    # An update changes the fields given and keeps the rest, the credential included.
    updated = moorage.json("proxy", "update", "hub", "--tag-ttl-seconds", "600")
    assert updated["tagTtlSeconds"] == 600
    assert updated["url"] == proxy["url"]
    assert updated["username"] == "puller"
    assert updated["credential"] == "password"
    assert (
        moorage.refused("proxy", "update", "hub", "--url", "http://169.254.169.254/")["status"]
        == 400
    )
    assert moorage.json("proxy", "show", "hub")["url"] == proxy["url"]
    cleared = moorage.json("proxy", "update", "hub", "--from-file", "-", stdin='{"password": null}')
    assert cleared["credential"] == "none"
    assert moorage.refused("proxy", "set", "team", "--url", "ftp://example") == {
        "status": 400,
        "detail": "outbound URLs must be http:// or https:// with a host",
    }

    assert moorage.refused("mirror", "set", "--project", "team") == {
        "status": 400,
        "detail": "project team is not a proxy-cache project; only a proxy-cache project can be"
        " the default mirror",
    }
    mirror = moorage.json("mirror", "set", "--project", "hub")
    assert mirror["project"] == "hub"
    assert mirror["source"] == "api"
    assert moorage.json("mirror", "show")["project"] == "hub"

    virtual = moorage.json(
        "virtual", "set", "all", "--members", "team", "--members", "hub", "--push-member", "team"
    )
    assert virtual["members"] == ["team", "hub"]
    assert virtual["pushMember"] == "team"
    assert moorage.refused("virtual", "set", "all", "--members", "ghost") == {
        "status": 400,
        "detail": "no such project: ghost",
    }
    assert moorage.json("virtual", "show", "all")["members"] == ["team", "hub"]

    moorage.run("virtual", "remove", "all")
    moorage.run("mirror", "remove")
    assert moorage.json("mirror", "show")["project"] is None
    moorage.run("proxy", "remove", "hub")
    actions = [entry["action"] for entry in moorage.audit()]
    for action in (
        "proxy:configure",
        "mirror:configure",
        "virtual:configure",
        "virtual:remove",
        "mirror:reset",
        "proxy:remove",
    ):
        assert action in actions


def test_replication_commands(moorage: Moorage) -> None:
    endpoint = moorage.json(
        "replication",
        "registry",
        "add",
        "--name",
        "dr",
        "--url",
        "http://127.0.0.1:9",
        "--kind",
        "distribution",
        "--allow-private-network",
        "--username",
        "robot",
        "--password-stdin",
        stdin="remote-secret\n",
    )
    assert endpoint["credential"] == "password"
    listed = moorage.out("replication", "registry", "list")
    assert "remote-secret" not in listed
    assert "dr" in listed

    rule = moorage.json(
        "replication",
        "rule",
        "add",
        "--name",
        "to-dr",
        "--endpoint-id",
        str(endpoint["id"]),
        "--direction",
        "push",
        "--repositories",
        "team/**",
        "--tags",
        "v*",
    )
    assert rule["repositories"] == ["team/**"]
    assert rule["endpoint"] == "dr"
    bad_cron = moorage.refused(
        "replication",
        "rule",
        "add",
        "--name",
        "nightly",
        "--endpoint-id",
        str(endpoint["id"]),
        "--direction",
        "push",
        "--trigger",
        "schedule",
        "--cron",
        "not a cron at all",
    )
    assert bad_cron == {"status": 422, "detail": "cron minute: bad value 'not'"}
    assert "tags.0" in field_messages(
        moorage.refused(
            "replication",
            "rule",
            "add",
            "--name",
            "x",
            "--endpoint-id",
            "1",
            "--direction",
            "push",
            "--tags",
            "v[",
        )
    )
    assert [r["name"] for r in moorage.json("replication", "rule", "list")] == ["to-dr"]

    queued = moorage.run("replication", "rule", "run", str(rule["id"])).stdout
    assert queued.startswith("queued execution ")
    executions = moorage.json("replication", "rule", "executions", str(rule["id"]))
    assert len(executions) == 1
    assert executions[0]["status"] in ("pending", "running", "failed")

    in_use = moorage.refused("replication", "registry", "remove", str(endpoint["id"]))
    assert in_use["status"] == 409
    moorage.run("replication", "rule", "remove", str(rule["id"]))
    moorage.run("replication", "registry", "remove", str(endpoint["id"]))
    assert moorage.json("replication", "registry", "list") == []
    actions = [entry["action"] for entry in moorage.audit()]
    for action in ("replication:endpoint-create", "replication:rule-create", "replication:run"):
        assert action in actions


def test_scanner_and_scan_commands(moorage: Moorage) -> None:
    moorage.run("project", "create", "team")
    adapter = moorage.json(
        "scanner",
        "add",
        "--name",
        "trivy",
        "--url",
        "http://127.0.0.1:9",
        "--allow-private-network",
        "--auth",
        "bearer",
        "--credential-stdin",
        stdin="adapter-token\n",
    )
    assert adapter["name"] == "trivy"
    assert "adapter-token" not in moorage.out("scanner", "show", "trivy")
    assert "url" in field_messages(
        moorage.refused("scanner", "add", "--name", "x", "--url", "gopher://x")
    )
    changed = moorage.json("scanner", "update", "trivy", "--description", "the trivy adapter")
    assert changed["description"] == "the trivy adapter"
    assert changed["url"] == "http://127.0.0.1:9"

    settings = moorage.json("scan-settings", "set", "team", "--scan-on-push", "--scanner", "trivy")
    assert settings["scanOnPush"] is True
    assert settings["scanner"] == "trivy"
    assert moorage.refused("scan-settings", "set", "team", "--scanner", "ghost") == {
        "status": 422,
        "detail": "scanner ghost is not registered",
    }
    assert moorage.refused("scan", "request", "team/app", DIGEST)["status"] == 404
    assert moorage.refused("scan", "report", "team/app", "sha256:short") == {
        "status": 400,
        "detail": "sha256 digest must be 64 lowercase hex characters",
        "code": "DIGEST_INVALID",
    }
    moorage.run("scan-settings", "set", "team")
    moorage.run("scanner", "remove", "trivy")
    assert moorage.json("scanner", "list") == []


def test_grant_role_and_settings_commands(moorage: Moorage) -> None:
    moorage.run("project", "create", "team")
    moorage.run("user", "create", "alice", "--password-stdin", stdin="a-long-enough-password\n")
    role = moorage.json("role", "set", "ops", "--actions", "pull", "--actions", "push")
    assert role["actions"] == ["pull", "push"]
    assert "actions.0" in field_messages(moorage.refused("role", "set", "ops2", "--actions", "fly"))
    grant = moorage.json(
        "grant",
        "add",
        "team",
        "--kind",
        "user",
        "--name",
        "alice",
        "--pattern",
        "app/**",
        "--actions",
        "pull",
    )
    assert grant["actions"] == ["pull"]
    no_actions = moorage.refused(
        "grant", "add", "team", "--kind", "user", "--name", "alice", "--pattern", "**"
    )
    assert field_messages(no_actions) == {"actions": "Field required"}
    assert [g["id"] for g in moorage.json("grant", "list", "team")] == [grant["id"]]
    moorage.run("grant", "remove", "team", str(grant["id"]))
    moorage.run("role", "remove", "ops")

    assert moorage.json("settings", "set", "--project-creation", "authenticated") == {
        "projectCreation": "authenticated"
    }
    assert "projectCreation" in field_messages(
        moorage.refused("settings", "set", "--project-creation", "everyone")
    )
    assert moorage.json("settings", "show") == {"projectCreation": "authenticated"}
    updated = moorage.json("user", "update", "alice", "--email", "alice@example.org", "--disabled")
    assert updated["email"] == "alice@example.org"
    assert updated["disabled"] is True
    assert moorage.refused("user", "update", "ghost", "--disabled")["status"] == 404


def test_a_running_server_applies_a_policy_set_with_the_cli(tmp_path: Path) -> None:
    moorage = Moorage(tmp_path / "data")
    server = RegistryProcess(moorage.data_dir).start()
    try:
        moorage.run("project", "create", "team")
        with httpx.Client(base_url=server.url, timeout=30, auth=RegistryAuth()) as v2:
            image = push_image(v2, "team/app", "v1")
            assert v2.get("/v2/team/app/manifests/v1").status_code == 200
            moorage.run("vuln-policy", "set", "team", "--enabled", "--block-unscanned")
            eventually(
                lambda: v2.get("/v2/team/app/manifests/v1").status_code == 403,
                what="the server to apply the policy",
            )
            refused = v2.get(f"/v2/team/app/manifests/{image.digest}")
            assert "has not been scanned" in assert_oci_error(refused, 403, "DENIED")["message"]

            moorage.run("immutable-tags", "add", "team", "--tags", "v*")
            moorage.run("vuln-policy", "set", "team", "--no-enabled")

            def tag_is_immutable() -> bool:
                moved = v2.delete(f"/v2/team/app/manifests/{image.digest}")
                return moved.status_code != 202

            eventually(tag_is_immutable, what="the server to protect the tag")
    finally:
        server.stop()


def test_robot_allow_and_a_body_from_standard_input(moorage: Moorage) -> None:
    moorage.run("project", "create", "team")
    moorage.run("robot", "create", "ci", "--project", "team", "--allow", "**:pull")
    robot = moorage.json("robot", "allow", "ci", "--project", "team", "--allow", "app/**:pull,push")
    assert robot["name"] == "robot$team+ci"
    assert robot["permissions"] == [
        {"project": "team", "repositories": "app/**", "actions": ["pull", "push"]}
    ]
    assert moorage.refused("robot", "allow", "ghost", "--allow", "team:**:pull") == {
        "status": 404,
        "detail": "robot robot$ghost not found",
    }
    assert "robot$team+ci" in moorage.out("robot", "list", "--project", "team")

    body = json.dumps({"enabled": True, "severity": "Low", "ignoreUnfixed": True})
    policy = moorage.json("vuln-policy", "set", "team", "--from-file", "-", stdin=body)
    assert (policy["severity"], policy["ignoreUnfixed"]) == ("Low", True)
    # An option overrides the field of the body.
    policy = moorage.json(
        "vuln-policy", "set", "team", "--from-file", "-", "--severity", "High", stdin=body
    )
    assert policy["severity"] == "High"
    assert moorage.refused("vuln-policy", "set", "team", "--from-file", "-", stdin="[1]") == {
        "status": 400,
        "detail": "- does not hold a JSON object",
    }
    assert moorage.json("vuln-policy", "show", "team") == policy


def test_listings_print_tables(moorage: Moorage) -> None:
    moorage.run("project", "create", "team")
    assert moorage.out("immutable-tags", "list", "team").strip() == "(none)"
    moorage.run("immutable-tags", "add", "team", "--tags", "release-*")
    lines = moorage.out("immutable-tags", "list", "team").splitlines()
    header = lines[1].split()
    assert [cell for cell in header if cell.isalpha()] == [
        "id",
        "repositories",
        "tags",
        "mode",
        "createdBy",
    ]
    assert any("release-*" in line and "matching" in line for line in lines[3:])
    roles = moorage.out("role", "list")
    assert "maintainer" in roles
    assert "builtIn" in roles


def test_a_replication_run_queued_with_the_cli_is_carried_out_by_the_server(
    tmp_path: Path,
) -> None:
    """The rule pushes team/** back into the same registry under copy/: the server's engine
    runs what the command queued, with the credential the command stored."""
    moorage = Moorage(tmp_path / "data")
    server = RegistryProcess(moorage.data_dir).start()
    try:
        moorage.run("project", "create", "team")
        with httpx.Client(base_url=server.url, timeout=30, auth=RegistryAuth()) as v2:
            image = push_image(v2, "team/app", "v1")
            endpoint = moorage.json(
                "replication",
                "registry",
                "add",
                "--name",
                "self",
                "--url",
                server.url,
                "--kind",
                "moorage",
                "--allow-private-network",
                "--username",
                ADMIN_USER,
                "--password-stdin",
                stdin=f"{ADMIN_PASSWORD}\n",
            )
            rule = moorage.json(
                "replication",
                "rule",
                "add",
                "--name",
                "copy",
                "--endpoint-id",
                str(endpoint["id"]),
                "--direction",
                "push",
                "--repositories",
                "team/**",
                "--destination-prefix",
                "copy",
            )
            execution = moorage.json("replication", "rule", "run", str(rule["id"]))

            def finished() -> bool:
                shown = moorage.json("replication", "execution", "show", str(execution["id"]))
                return bool(shown["status"] not in ("pending", "running"))

            eventually(finished, timeout=90, what="the server to run the execution")
            shown = moorage.json("replication", "execution", "show", str(execution["id"]))
            assert shown["status"] == "succeeded", shown
            copied = v2.get("/v2/copy/team/app/manifests/v1", headers={"Accept": image.media_type})
            assert copied.status_code == 200
            assert copied.headers["Docker-Content-Digest"] == image.digest
    finally:
        server.stop()


def test_the_older_listings_also_print_the_apis_json_and_tables(moorage: Moorage) -> None:
    moorage.run("user", "create", "alice", "--password-stdin", stdin="a-long-enough-password\n")
    moorage.run("project", "create", "team")
    moorage.run("member", "set", "team", "alice", "developer")
    moorage.run("robot", "create", "ci", "--project", "team", "--allow", "**:pull")
    moorage.run("group", "create", "ops")
    moorage.run("token", "create", "alice", "laptop")
    moorage.run("stage", "set", "team", "--stage", "dev")

    assert moorage.out("project", "list").startswith("team\tprivate\t")
    projects = moorage.json("project", "list")
    assert [(p["name"], p["stage"], p["promotionOnly"]) for p in projects] == [
        ("team", "dev", False)
    ]
    assert [u["username"] for u in moorage.json("user", "list")] == ["alice"]
    assert moorage.json("member", "list", "team") == [
        {"kind": "user", "name": "alice", "role": "developer"}
    ]
    assert [r["name"] for r in moorage.json("robot", "list", "--project", "team")] == [
        "robot$team+ci"
    ]
    assert [g["name"] for g in moorage.json("group", "list")] == ["ops"]
    tokens = moorage.json("token", "list", "alice")
    assert [t["name"] for t in tokens] == ["laptop"]
    assert "mpat_" not in json.dumps(tokens)
    assert "developer" in moorage.out("member", "list", "team", "--output", "table")
    assert moorage.refused("member", "list", "nope")["status"] == 404
