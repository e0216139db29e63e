"""`moorage retention`: set a policy, dry-run and run it, and read the history, as an operator
does on the host while the server runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.auth import RegistryAuth
from tests.support.oci import push_image
from tests.support.server import RegistryProcess, command_environment


class Moorage:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = command_environment(data_dir)
        self.env["COLUMNS"] = "200"

    def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "moorage", *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=300,
        )
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--output", "json").stdout)


def test_retention_commands(tmp_path: Path) -> None:
    moorage = Moorage(tmp_path / "data")
    server = RegistryProcess(moorage.data_dir).start()
    try:
        moorage.run("project", "create", "team")
        with httpx.Client(base_url=server.url, timeout=30, auth=RegistryAuth()) as v2:
            images = [push_image(v2, "team/app", f"v{i}") for i in range(3)]
            refused = moorage.run(
                "retention",
                "set",
                "team",
                "--rules",
                '[{"criterion": "latestPushed"}]',
                "--output",
                "json",
                code=1,
            )
            assert "count" in refused.stderr
            rules = '[{"criterion": "latestPushed", "count": 1, "tags": ["v*"]}]'
            policy = moorage.json("retention", "set", "team", "--rules", rules)
            assert policy["rules"][0]["count"] == 1
            assert "latestPushed" in moorage.run("retention", "show", "team").stdout

            dry = moorage.json("retention", "run", "team")
            assert dry["dryRun"] is True
            assert dry["removed"] == 2
            assert all(
                v2.head(f"/v2/team/app/manifests/{i.digest}").status_code == 200 for i in images
            )
            real = moorage.json("retention", "run", "team", "--no-dry-run")
            assert real["removed"] == 2
            decided = moorage.json("retention", "decisions", "team", str(real["id"]))
            outcomes = {item["digest"]: item["outcome"] for item in decided}
            assert outcomes == {
                images[0].digest: "removed",
                images[1].digest: "removed",
                images[2].digest: "kept",
            }
            for image in images[:2]:
                assert v2.head(f"/v2/team/app/manifests/{image.digest}").status_code == 404
            assert v2.head("/v2/team/app/manifests/v2").status_code == 200
            runs = moorage.json("retention", "runs", "team")
            assert [r["id"] for r in runs] == [real["id"], dry["id"]]
            table = moorage.run("retention", "decisions", "team", str(real["id"])).stdout
            assert "removed" in table
            assert "rule 1" in table
            moorage.run("retention", "remove", "team")
            moorage.run("retention", "show", "team", code=1)
    finally:
        server.stop()
