"""Handlers of the OCI Distribution API (/v2). Thin: parse, call a service, shape the reply."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import TypeVar
from urllib.parse import quote, urlencode

from aiohttp import web

from moorage.domain import mediatypes as mt
from moorage.domain.access import Action, decide
from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.names import Reference, project_of, validate_repository_name
from moorage.domain.negotiation import parse_accept
from moorage.domain.ranges import ByteRange, RangeError, parse_chunk_range, parse_range
from moorage.http.access import (
    ACTOR,
    CALLER,
    PULL,
    REPOSITORY,
    REQUESTED_NAME,
    may,
    pull_access,
    sign_in_challenge,
)
from moorage.http.remote_blobs import REMOTE_BLOBS
from moorage.http.responses import BlobResponse, json_response
from moorage.http.state import IAM, ROUTING, SERVICES, Services
from moorage.services.distribution.proxy import LiveBlob
from moorage.services.registry.pulls import BlobWant, SignInRequired, UpstreamBlobSize
from moorage.services.registry.registry import manifest_too_large, referrers_index
from moorage.services.registry.uploads import range_header

log = logging.getLogger("moorage.http")

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}

T = TypeVar("T")


# -- base and discovery


async def api_version(request: web.Request) -> web.Response:
    return json_response({})


# A filtered catalog page reads at most this many repository names before it answers.
_CATALOG_SCAN_LIMIT = 20_000


async def catalog(request: web.Request) -> web.Response:
    """Repositories the caller may pull, in order; the filter is the same `decide` as a pull."""
    services = request.app[SERVICES]
    limit, last = _page(request, services.max_page_size, services.unpaged_listing_size)
    visible = await _pull_filter(request)
    if visible is None:
        page = await services.registry.list_repositories(last, limit + 1) if limit else []
        names, more = _one_page(page, limit)
        cursor = names[-1] if names else None
    else:
        names, more, cursor = await _visible_page(services, visible, last, limit)
    headers = {}
    if more and cursor:
        headers["Link"] = _next_link("/v2/_catalog", _onward(request, limit, cursor))
    return json_response({"repositories": names}, headers=headers)


async def _visible_page(
    services: Services, visible: Callable[[str], bool], last: str | None, limit: int
) -> tuple[list[str], bool, str | None]:
    """One page of the repositories `visible` admits: (names, more follow, cursor for next)."""
    names: list[str] = []
    cursor, scanned = last, 0
    while limit and scanned < _CATALOG_SCAN_LIMIT:
        batch = await services.registry.list_repositories(cursor, services.max_page_size)
        for name in batch:
            if visible(name):
                if len(names) == limit:
                    return names, True, names[-1]
                names.append(name)
            cursor = name
        scanned += len(batch)
        if len(batch) < services.max_page_size:
            return names, False, cursor
    # The scan limit cut this page short: the client continues from where it stopped.
    return names, bool(limit), cursor


async def _pull_filter(request: web.Request) -> Callable[[str], bool] | None:
    iam = request.app[IAM]
    subject = request[CALLER].subject
    access = await iam.threads.run(iam.identity.access_of, subject)
    if access.is_admin and access.limit is None:
        return None
    public = await iam.threads.run(iam.identity.public_projects)
    return lambda name: decide(access, Action.PULL, project_of(name), name, public)


async def list_tags(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    limit, last = _page(request, services.max_page_size, services.unpaged_listing_size)
    tags, more = await request.app[ROUTING].pulls.tags(await pull_access(request), last, limit)
    # The name the client asked for: a mirrored name is answered as the client knows it.
    shown = request.get(REQUESTED_NAME, request[REPOSITORY])
    headers = {}
    if more and tags:
        headers["Link"] = _next_link(f"/v2/{shown}/tags/list", _onward(request, limit, tags[-1]))
    return json_response({"name": shown, "tags": tags}, headers=headers)


async def referrers(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    subject = Digest.parse(request.match_info["digest"])
    limit, last = _page(request, services.max_page_size)
    artifact_type = request.query.get("artifactType") or None
    found = await request.app[ROUTING].pulls.referrers(
        await pull_access(request), subject, artifact_type, last, limit + 1
    )
    records, more = _one_page(found, limit)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    if more and records:
        query = {"n": str(limit), "last": records[-1].digest}
        if artifact_type:
            query["artifactType"] = artifact_type
        shown = request.get(REQUESTED_NAME, request[REPOSITORY])
        headers["Link"] = _next_link(f"/v2/{shown}/referrers/{subject}", query)
    return json_response(referrers_index(records), headers=headers, content_type=mt.OCI_INDEX)


# -- manifests


async def get_manifest(request: web.Request) -> web.Response:
    reference = Reference.parse(request.match_info["reference"])
    accepted = parse_accept(request.headers.getall("Accept", []))
    try:
        fetched = await request.app[ROUTING].pulls.manifest(
            await pull_access(request),
            reference,
            accepted,
            count_pull=request.method != "HEAD",
        )
    except SignInRequired:
        raise sign_in_challenge(request) from None
    etag = f'"{fetched.record.digest}"'
    headers = {
        "Docker-Content-Digest": fetched.record.digest,
        "ETag": etag,
        "Content-Type": fetched.record.media_type,
    }
    if request.headers.get("If-None-Match") in (etag, "*"):
        return web.Response(status=304, headers=headers)
    return web.Response(body=fetched.body, headers=headers)


async def put_manifest(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name = request[REPOSITORY]
    reference = Reference.parse(request.match_info["reference"])
    body = await _read_capped(request, services.registry.max_manifest_bytes)
    manifest = await services.registry.put_manifest(
        name, reference, request.headers.get("Content-Type", ""), body, request[ACTOR]
    )
    headers = {
        "Location": f"/v2/{name}/manifests/{manifest.digest}",
        "Docker-Content-Digest": str(manifest.digest),
    }
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject.digest)
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    reference = Reference.parse(request.match_info["reference"])
    await services.registry.delete_manifest(request[REPOSITORY], reference, request[ACTOR])
    return web.Response(status=202)


# -- blobs


async def get_blob(request: web.Request) -> web.StreamResponse:
    digest = Digest.parse(request.match_info["digest"])
    etag = f'"{digest}"'
    headers = {"Docker-Content-Digest": str(digest), "ETag": etag, "Accept-Ranges": "bytes"}
    pulls = request.app[ROUTING].pulls
    try:
        source = await pulls.blob(await pull_access(request), digest, _blob_want(request))
    except SignInRequired:
        raise sign_in_challenge(request) from None
    if isinstance(source, UpstreamBlobSize):
        # A HEAD of an uncached blob: the upstream's answer, nothing downloaded.
        response = web.Response(status=200, headers=headers)
        response.content_type = "application/octet-stream"
        response.headers["Content-Length"] = str(source.size)
        return response
    if isinstance(source, LiveBlob):
        return await _stream_live(request, source, headers, etag)
    location = source.location
    if request.headers.get("If-None-Match") in (etag, "*"):
        return web.Response(status=304, headers=headers)
    byte_range = _requested_range(request, location.size, etag)
    if location.path is None and REMOTE_BLOBS in request.app:
        remote = await request.app[REMOTE_BLOBS].respond(request, location, byte_range, headers)
        if remote is not None:
            return remote
    # Opened here, not while the response is sent: bytes that are gone (collected since the
    # lookup) are a BLOB_UNKNOWN answer, not a dropped connection.
    opener = None
    if request.method != "HEAD" and location.size > 0:
        opener = await pulls.open_blob(location)
    return BlobResponse(
        path=location.path,
        opener=opener,
        size=location.size,
        byte_range=byte_range,
        headers=headers,
    )


def _blob_want(request: web.Request) -> BlobWant:
    """What an uncached blob must provide: a plain GET or a range streams while it is stored,
    a HEAD asks the upstream, conditional requests wait until it is stored."""
    if "If-None-Match" in request.headers:
        return BlobWant.STORED
    if request.method == "HEAD":
        return BlobWant.HEAD
    return BlobWant.STREAM


async def delete_blob(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    digest = Digest.parse(request.match_info["digest"])
    await services.registry.delete_blob(request[REPOSITORY], digest, request[ACTOR])
    return web.Response(status=202)


# -- uploads


async def start_upload(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name = request[REPOSITORY]
    actor = request[ACTOR]
    # Push policies (a promotion-only project) refuse before any byte is sent.
    await services.registry.authorize_upload(name, actor)
    if "digest" in request.query:
        digest = Digest.parse(request.query["digest"])
        await services.uploads.monolithic(
            name, digest, request.content_length, _body(request), actor
        )
        return _blob_created(name, digest)
    if "mount" in request.query:
        digest = Digest.parse(request.query["mount"])
        source = request.query.get("from", "")
        if (
            await _may_mount_from(request, source)
            and await services.registry.mount_blob(name, source, digest, actor) is not None
        ):
            return _blob_created(name, digest)
    upload_id = await services.uploads.start(name, actor)
    return web.Response(status=202, headers=_upload_headers(name, upload_id, 0))


async def _may_mount_from(request: web.Request, source: str) -> bool:
    # An unusable `from` is not an error: the client gets an ordinary upload session, which
    # also keeps whether the blob exists elsewhere a secret.
    try:
        validate_repository_name(source)
    except RegistryError:
        return False
    return await may(request, PULL, source)


async def upload_status(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name, upload_id = request[REPOSITORY], request.match_info["upload_id"]
    size = await services.uploads.status(name, upload_id, request[ACTOR])
    return web.Response(status=204, headers=_upload_headers(name, upload_id, size))


async def patch_upload(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name, upload_id = request[REPOSITORY], request.match_info["upload_id"]
    size = await services.uploads.append(
        name,
        upload_id,
        _content_range(request),
        request.content_length,
        _body(request),
        request[ACTOR],
    )
    return web.Response(status=202, headers=_upload_headers(name, upload_id, size))


async def finish_upload(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name, upload_id = request[REPOSITORY], request.match_info["upload_id"]
    raw_digest = request.query.get("digest")
    if not raw_digest:
        raise RegistryError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
    digest = Digest.parse(raw_digest)
    await services.uploads.finish(
        name,
        upload_id,
        digest,
        _content_range(request),
        request.content_length,
        _body(request),
        request[ACTOR],
    )
    return _blob_created(name, digest)


async def cancel_upload(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await services.uploads.cancel(
        request[REPOSITORY], request.match_info["upload_id"], request[ACTOR]
    )
    return web.Response(status=204)


# -- blobs streamed from an upstream


async def _stream_live(
    request: web.Request, live: LiveBlob, headers: dict[str, str], etag: str
) -> web.StreamResponse:
    """Send a blob (or the requested range of it) while it arrives from the upstream.

    If the upstream's bytes turn out not to match the digest, the stored copy is discarded and
    the connection is cut before the body is complete, so the client fails too. A range is
    sent as its bytes pass; the fetch then goes on in the background until the blob is stored.
    """
    try:
        byte_range = _requested_range(request, live.size, etag)
    except RegistryError:
        await live.aclose()
        raise
    response = web.StreamResponse(
        status=206 if byte_range else 200,
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    start, end = (byte_range.start, byte_range.end) if byte_range else (0, live.size - 1)
    if byte_range is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{live.size}"
    response.content_length = end - start + 1
    handed_off = False
    try:
        await response.prepare(request)
        offset = 0
        async for chunk in live.chunks():
            low, high = max(start - offset, 0), min(end + 1 - offset, len(chunk))
            offset += len(chunk)
            if low < high:
                await response.write(chunk[low:high])
            if offset > end and byte_range is not None and end < live.size - 1:
                # The range is complete before the blob: finish the fetch without the client.
                handed_off = True
                _finish_in_background(live)
                break
    except RegistryError as error:
        log.warning("proxy fetch of %s failed mid-stream: %s", headers["ETag"], error.message)
        if not response.prepared:
            raise
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        if not handed_off:
            await live.aclose()
    await response.write_eof()
    return response


_BACKGROUND: set[asyncio.Task[None]] = set()


def _finish_in_background(live: LiveBlob) -> None:
    async def drain() -> None:
        try:
            async for _ in live.chunks():
                pass
        except RegistryError as error:
            log.warning("background proxy fetch failed: %s", error.message)
        finally:
            await live.aclose()

    task = asyncio.get_running_loop().create_task(drain())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


# -- helpers


def _body(request: web.Request) -> AsyncIterator[bytes]:
    return request.content.iter_any()


async def _read_capped(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise manifest_too_large(limit)
    body = await request.content.read(limit + 1)
    while len(body) <= limit and not request.content.at_eof():
        more = await request.content.read(limit + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > limit:
        raise manifest_too_large(limit)
    return body


def _content_range(request: web.Request) -> ByteRange | None:
    value = request.headers.get("Content-Range")
    if value is None:
        return None
    try:
        return parse_chunk_range(value)
    except RangeError as error:
        raise RegistryError(ErrorCode.BLOB_UPLOAD_INVALID, str(error)) from None


def _requested_range(request: web.Request, size: int, etag: str) -> ByteRange | None:
    value = request.headers.get("Range")
    if value is None:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != etag:
        return None
    try:
        return parse_range(value, size)
    except RangeError as error:
        raise RegistryError(
            ErrorCode.BLOB_UNKNOWN,
            f"requested range not satisfiable: {error}",
            status=416,
            headers={"Content-Range": f"bytes */{size}"},
        ) from None


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def _page(
    request: web.Request, max_page: int, unpaged: int | None = None
) -> tuple[int, str | None]:
    """(limit, last) from `n` and `last`; `n` is capped so no listing is unbounded.

    Without `n` a client asks for the whole list (the spec's first form): it gets up to
    `unpaged` names at once, and a Link without `n` to the rest."""
    raw = request.query.get("n")
    if raw is None or raw == "":
        limit = unpaged or max_page
    else:
        # isascii: str.isdigit() also admits digits such as '²' that int() rejects.
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
            raise RegistryError(
                ErrorCode.UNSUPPORTED, "n must be a non-negative integer", status=400
            )
        limit = min(int(raw), max_page)
    last = request.query.get("last") or None
    if last is not None and len(last) > 512:
        raise RegistryError(ErrorCode.UNSUPPORTED, "last is too long", status=400)
    # Every tag, repository name and digest is visible ASCII; anything else (NUL, controls,
    # undecodable bytes) is no cursor, and PostgreSQL would refuse a NUL in a text parameter.
    if last is not None and not _VISIBLE_ASCII.fullmatch(last):
        raise RegistryError(
            ErrorCode.UNSUPPORTED, "last must be visible ASCII characters", status=400
        )
    return limit, last


def _onward(request: web.Request, limit: int, last: str) -> dict[str, str]:
    """The query of the next page: the same `n` (none if the client gave none), after `last`."""
    if request.query.get("n"):
        return {"n": str(limit), "last": last}
    return {"last": last}


def _one_page(items: list[T], limit: int) -> tuple[list[T], bool]:
    """A listing asks for one item past the page: (the page, whether another page follows)."""
    return items[:limit], len(items) > limit


def _next_link(path: str, query: dict[str, str]) -> str:
    return f'<{path}?{urlencode(query, quote_via=quote)}>; rel="next"'


def _upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Range": range_header(size),
        "Docker-Upload-UUID": upload_id,
        "Content-Length": "0",
    }


def _blob_created(name: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )
