"""A scanner adapter implementing Harbor's pluggable scanner API on a loopback port.

It runs a real aiohttp server in a thread of its own. Tests program what it does (how many
polls stay pending, the report, a failure, never finishing, a wrong content type, the
credential it insists on) and read back every request it received.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.pki import Issued

REPORT_V1_1 = "application/vnd.security.vulnerability.report; version=1.1"
REPORT_HARBOR_V1_0 = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
ERROR_TYPE = "application/vnd.scanner.adapter.error+json; version=1.0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass
class Behaviour:
    pending_polls: int = 0  # report polls answered 302 before the report
    vulnerabilities: list[dict[str, Any]] = field(default_factory=list)
    fail_message: str | None = None  # answer the report poll with 500 and this ErrorResponse
    never_ready: bool = False
    report_content_type: str | None = None  # None: the type that was asked for
    refresh_after: str = "1"
    consumes: list[str] = field(default_factory=lambda: [OCI_MANIFEST, DOCKER_MANIFEST])
    produces: list[str] = field(default_factory=lambda: [REPORT_V1_1, REPORT_HARBOR_V1_0])
    # Headers every request must carry (the adapter's own authentication), else 401.
    required_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def vulnerability(
    vuln_id: str,
    package: str,
    version: str,
    severity: str,
    fix_version: str = "",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": vuln_id,
        "package": package,
        "version": version,
        "fix_version": fix_version,
        "severity": severity,
        "description": f"{vuln_id} in {package}",
        "links": [f"https://advisories.example/{vuln_id}"],
        **extra,
    }


class FakeAdapter:
    def __init__(self, tls: Issued | None = None) -> None:
        """`tls`: serve HTTPS with this server certificate."""
        self.behaviour = Behaviour()
        self._tls = tls
        self.received: list[Received] = []
        self._polls: dict[str, int] = {}
        self._artifacts: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> FakeAdapter:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def requests_to(self, suffix: str) -> list[Received]:
        with self._lock:
            return [request for request in self.received if request.path.endswith(suffix)]

    def scan_requests(self) -> list[dict[str, Any]]:
        return [request.json() for request in self.requests_to("/api/v1/scan")]

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/v1/metadata", self._metadata)
        app.router.add_post("/api/v1/scan", self._scan)
        app.router.add_get("/api/v1/scan/{scan_id}/report", self._report)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls.cert, self._tls.key)
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context).start()
        self.port = int(self._runner.addresses[0][1])

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self.received.append(
                Received(request.method, request.path, dict(request.headers), body)
            )
        for name, value in self.behaviour.required_headers.items():
            if request.headers.get(name) != value:
                return _error(401, "missing or wrong credentials")
        response: web.StreamResponse = await handler(request)
        return response

    async def _metadata(self, request: web.Request) -> web.Response:
        document = {
            "scanner": {"name": "Fake", "vendor": "Tests", "version": "1.0"},
            "capabilities": [
                {
                    "type": "vulnerability",
                    "consumes_mime_types": self.behaviour.consumes,
                    "produces_mime_types": self.behaviour.produces,
                }
            ],
            "properties": {"harbor.scanner-adapter/scanner-type": "os-package-vulnerability"},
        }
        return _json(200, document, "application/vnd.scanner.adapter.metadata+json; version=1.1")

    async def _scan(self, request: web.Request) -> web.Response:
        try:
            document = json.loads(await request.read())
            artifact = document["artifact"]
            digest = artifact["digest"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "bad scan request")
        scan_id = f"scan-{next(self._ids)}"
        with self._lock:
            self._polls[scan_id] = 0
            self._artifacts[scan_id] = {**artifact, "digest": digest}
        return _json(
            202, {"id": scan_id}, "application/vnd.scanner.adapter.scan.response+json; version=1.0"
        )

    async def _report(self, request: web.Request) -> web.Response:
        scan_id = request.match_info["scan_id"]
        behaviour = self.behaviour
        with self._lock:
            if scan_id not in self._polls:
                return _error(404, "unknown scan")
            self._polls[scan_id] += 1
            polls = self._polls[scan_id]
        if behaviour.never_ready or polls <= behaviour.pending_polls:
            return web.Response(status=302, headers={"Refresh-After": behaviour.refresh_after})
        if behaviour.fail_message is not None:
            return _error(500, behaviour.fail_message)
        accept = request.headers.get("Accept", REPORT_V1_1)
        report = {
            "generated_at": "2026-12-06T01:00:00Z",
            "artifact": self._artifacts[scan_id],
            "scanner": {"name": "Fake", "vendor": "Tests", "version": "1.0"},
            "severity": "High",
            "vulnerabilities": behaviour.vulnerabilities,
        }
        return _json(200, report, behaviour.report_content_type or accept)


def _json(status: int, document: Any, content_type: str) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(document).encode(), headers={"Content-Type": content_type}
    )


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": {"message": message}}, ERROR_TYPE)
