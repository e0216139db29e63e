"""Handlers of the OCI Distribution API (/v2). Thin: parse, call a service, shape the reply."""

from __future__ import annotations

import logging
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
    VIRTUAL,
    may,
    may_fetch_upstream,
)
from moorage.http.responses import BlobResponse, json_response
from moorage.http.state import IAM, ROUTING, SERVICES, Services
from moorage.services.proxy import LiveBlob, MayFetch, ProxyConfig
from moorage.services.registry import manifest_too_large, referrers_index
from moorage.services.uploads import range_header
from moorage.services.virtual import FetchDecision, MayPull

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
    limit, last = _page(request, services.max_page_size)
    visible = await _pull_filter(request)
    if visible is None:
        page = await services.registry.list_repositories(last, limit + 1) if limit else []
        names, more = _one_page(page, limit)
        cursor = names[-1] if names else None
    else:
        names, more, cursor = await _visible_page(services, visible, last, limit)
    headers = {}
    if more and cursor:
        headers["Link"] = _next_link("/v2/_catalog", {"n": str(limit), "last": cursor})
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
    name = request[REPOSITORY]
    limit, last = _page(request, services.max_page_size)
    virtual = request.get(VIRTUAL)
    if virtual is not None:
        tags, more = await request.app[ROUTING].virtual_pulls.tags(
            virtual, name, _member_pull(request), last, limit
        )
    else:
        # Also with n=0 the query runs: the repository must exist.
        tags, more = _one_page(await services.registry.list_tags(name, last, limit + 1), limit)
    headers = {}
    if more and tags:
        headers["Link"] = _next_link(f"/v2/{name}/tags/list", {"n": str(limit), "last": tags[-1]})
    return json_response({"name": name, "tags": tags}, headers=headers)


async def referrers(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name = request[REPOSITORY]
    subject = Digest.parse(request.match_info["digest"])
    limit, last = _page(request, services.max_page_size, default_all=True)
    artifact_type = request.query.get("artifactType") or None
    source: str | None = name
    virtual = request.get(VIRTUAL)
    if virtual is not None:
        source = await request.app[ROUTING].virtual_pulls.referrers_source(
            virtual, name, subject, artifact_type, _member_pull(request)
        )
    found = (
        await services.registry.referrers(source, subject, artifact_type, last, limit + 1)
        if source is not None
        else []
    )
    records, more = _one_page(found, limit)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    if more and records:
        query = {"n": str(limit), "last": records[-1].digest}
        if artifact_type:
            query["artifactType"] = artifact_type
        headers["Link"] = _next_link(f"/v2/{name}/referrers/{subject}", query)
    return json_response(referrers_index(records), headers=headers, content_type=mt.OCI_INDEX)


# -- manifests


async def get_manifest(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    reference = Reference.parse(request.match_info["reference"])
    head = request.method == "HEAD"
    name = request[REPOSITORY]
    accepted = parse_accept(request.headers.getall("Accept", []))
    virtual = request.get(VIRTUAL)
    if virtual is not None:
        _, fetched = await request.app[ROUTING].virtual_pulls.manifest(
            virtual,
            name,
            reference,
            accepted,
            request[ACTOR],
            _member_pull(request),
            _member_fetch(request),
            count_pull=not head,
        )
    else:
        proxy = await services.proxy.config_for(project_of(name))
        if proxy is not None:
            await services.proxy.ensure_manifest(
                proxy, name, reference, request[ACTOR], _fetch_decision(request, name, proxy)
            )
        fetched = await services.registry.get_manifest(
            name, reference, accepted, request[ACTOR], count_pull=not head
        )
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
    services = request.app[SERVICES]
    digest = Digest.parse(request.match_info["digest"])
    name = request[REPOSITORY]
    etag = f'"{digest}"'
    headers = {"Docker-Content-Digest": str(digest), "ETag": etag, "Accept-Ranges": "bytes"}
    # A plain GET streams an uncached blob while it is stored; HEAD, ranges and conditional
    # requests wait until it is stored and are then answered from it.
    whole = (
        request.method == "GET"
        and "Range" not in request.headers
        and "If-None-Match" not in request.headers
    )
    virtual = request.get(VIRTUAL)
    proxy = None if virtual else await services.proxy.config_for(project_of(name))
    if virtual is not None:
        name, live = await request.app[ROUTING].virtual_pulls.blob(
            virtual,
            name,
            digest,
            request[ACTOR],
            _member_pull(request),
            _member_fetch(request),
            stream=whole,
        )
        if live is not None:
            return await _stream_live(request, live, headers)
    elif proxy is not None:
        live = await services.proxy.ensure_blob(
            proxy,
            name,
            digest,
            request[ACTOR],
            _fetch_decision(request, name, proxy),
            stream=whole,
        )
        if live is not None:
            return await _stream_live(request, live, headers)
    blob = await services.registry.locate_blob(name, digest)
    if request.headers.get("If-None-Match") in (etag, "*"):
        return web.Response(status=304, headers=headers)
    byte_range = _requested_range(request, blob.size, etag)
    opener = None if blob.path is not None else await services.registry.open_blob(digest)
    return BlobResponse(
        path=blob.path, opener=opener, size=blob.size, byte_range=byte_range, headers=headers
    )


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


# -- proxy-cache projects


def _member_pull(request: web.Request) -> MayPull:
    """Pull on a virtual project's member: decided as any pull, by the same authorizer."""

    async def decide_pull(repository: str) -> bool:
        return await may(request, PULL, repository)

    return decide_pull


def _member_fetch(request: web.Request) -> FetchDecision:
    def decision(repository: str, proxy: ProxyConfig) -> MayFetch:
        return _fetch_decision(request, repository, proxy)

    return decision


def _fetch_decision(request: web.Request, name: str, proxy: ProxyConfig) -> MayFetch:
    async def decide_fetch(required: bool) -> bool:
        return await may_fetch_upstream(
            request, name, public_fetch=proxy.anonymous_fetch, challenge=required
        )

    return decide_fetch


async def _stream_live(
    request: web.Request, live: LiveBlob, headers: dict[str, str]
) -> web.StreamResponse:
    """Send a blob while it arrives from the upstream.

    If the upstream's bytes turn out not to match the digest, the stored copy is discarded and
    the connection is cut before the body is complete, so the client fails too.
    """
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/octet-stream"})
    response.content_length = live.size
    try:
        await response.prepare(request)
        async for chunk in live.chunks():
            await response.write(chunk)
    except RegistryError as error:
        log.warning("proxy fetch of %s failed mid-stream: %s", headers["ETag"], error.message)
        if not response.prepared:
            raise
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        await live.aclose()
    await response.write_eof()
    return response


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


def _page(
    request: web.Request, max_page: int, *, default_all: bool = False
) -> tuple[int, str | None]:
    """(limit, last) from `n` and `last`; `n` is capped so no listing is unbounded."""
    raw = request.query.get("n")
    if raw is None or raw == "":
        limit = max_page
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
    return limit, last


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
