"""Tag and catalog listings over HTTP, on a server with SQLite and one with PostgreSQL.

Both servers cap `n` at 5 (`max_page_size`) and a listing without `n` at 7
(`unpaged_listing_size`), so that both caps and their `Link` chains are walked at every
boundary with a handful of tags.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.registry.test_listing_store import ABSENT_CURSORS, TRICKY_TAGS
from tests.support.auth import RegistryAuth
from tests.support.oci import OCI_MANIFEST, assert_oci_error, bearer, fetch_token, push_image
from tests.support.server import RegistryProcess
from tests.support.services import PostgresServer

CAP = 5
UNPAGED = 7
_names = itertools.count()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RegistryProcess]]:
    environment = {
        "MOORAGE_MAX_PAGE_SIZE": str(CAP),
        "MOORAGE_UNPAGED_LISTING_SIZE": str(UNPAGED),
    }
    with PostgresServer() as postgres:
        url = postgres.create_database("listing_http")
        on_sqlite = RegistryProcess(tmp_path_factory.mktemp("sqlite") / "data", env=environment)
        on_postgres = RegistryProcess(
            tmp_path_factory.mktemp("postgresql") / "data",
            env={**environment, "MOORAGE_DATABASE_URL": url},
        )
        with on_sqlite.start(), on_postgres.start():
            yield {"sqlite": on_sqlite, "postgresql": on_postgres}


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, servers: dict[str, RegistryProcess]) -> RegistryProcess:
    return servers[request.param]


@pytest.fixture
def client(server: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
        yield http


@pytest.fixture(scope="module")
def tagged(servers: dict[str, RegistryProcess]) -> str:
    """One repository holding TRICKY_TAGS on both servers."""
    name = "listing/tricky"
    for server in servers.values():
        with httpx.Client(base_url=server.url, timeout=60, auth=RegistryAuth()) as http:
            image = push_image(http, name)
            for tag in TRICKY_TAGS:
                response = http.put(
                    f"/v2/{name}/manifests/{tag}",
                    content=image.body,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                assert response.status_code == 201, response.text
    return name


def next_link(response: httpx.Response) -> str | None:
    value = response.headers.get("Link")
    if value is None:
        return None
    assert value.startswith("<"), value
    assert value.endswith('>; rel="next"'), value
    return value[1 : value.index(">")]


def walk(client: httpx.Client, first: str, key: str) -> list[list[str]]:
    """Every page from `first` on, following Link; a Link keeps `n` exactly when `first` has it."""
    pages: list[list[str]] = []
    path: str | None = first
    paged = "n" in parse_qs(urlsplit(first).query)
    while path is not None:
        response = client.get(path)
        assert response.status_code == 200, response.text
        page = response.json()[key]
        path = next_link(response)
        if path is not None:
            assert page, "a Link header led to an empty page"
            query = parse_qs(urlsplit(path).query)
            assert query["last"] == [page[-1]]
            assert ("n" in query) == paged, path
        pages.append(page)
        assert len(pages) < 100, "pagination does not terminate"
    return pages


# -- tags


@pytest.mark.parametrize("n", [None, 1, 2, CAP - 1, CAP, CAP + 1, 1000])
def test_following_link_yields_every_tag_once_in_byte_order(
    client: httpx.Client, tagged: str, n: int | None
) -> None:
    first = f"/v2/{tagged}/tags/list" + ("" if n is None else f"?n={n}")
    pages = walk(client, first, "tags")
    size = UNPAGED if n is None else min(n, CAP)
    assert [tag for page in pages for tag in page] == sorted(TRICKY_TAGS)
    assert all(len(page) == size for page in pages[:-1])
    assert 0 < len(pages[-1]) <= size


def test_link_names_n_and_the_last_tag(client: httpx.Client, tagged: str) -> None:
    response = client.get(f"/v2/{tagged}/tags/list", params={"n": 2, "last": "a"})
    page = response.json()["tags"]
    assert page == [tag for tag in sorted(TRICKY_TAGS) if tag > "a"][:2]
    link = next_link(response)
    assert link is not None
    assert urlsplit(link).path == f"/v2/{tagged}/tags/list"
    assert parse_qs(urlsplit(link).query) == {"n": ["2"], "last": [page[-1]]}
    # Above the cap, n is the cap; without n the Link leads on without one either.
    response = client.get(f"/v2/{tagged}/tags/list", params={"n": 1000})
    assert response.json()["tags"] == sorted(TRICKY_TAGS)[:CAP]
    link = next_link(response)
    assert link is not None
    assert parse_qs(urlsplit(link).query) == {"n": [str(CAP)], "last": [sorted(TRICKY_TAGS)[4]]}
    response = client.get(f"/v2/{tagged}/tags/list")
    assert response.json()["tags"] == sorted(TRICKY_TAGS)[:UNPAGED]
    link = next_link(response)
    assert link is not None
    assert parse_qs(urlsplit(link).query) == {"last": [sorted(TRICKY_TAGS)[UNPAGED - 1]]}


def test_last_is_exclusive_whether_or_not_it_is_a_tag(client: httpx.Client, tagged: str) -> None:
    ordered = sorted(TRICKY_TAGS)
    for cursor in [*ordered[::3], ordered[-1], *ABSENT_CURSORS]:
        response = client.get(f"/v2/{tagged}/tags/list", params={"n": 2, "last": cursor})
        assert response.status_code == 200, response.text
        expected = [tag for tag in ordered if tag > cursor]
        assert response.json() == {"name": tagged, "tags": expected[:2]}, cursor
        assert (next_link(response) is not None) == (len(expected) > 2), cursor


@pytest.mark.parametrize(
    "last",
    ["\x00", "a\x00b", "a\x01", "\x7f", " a", "a b", "a\tb", "\u00e9", "\ufffd", "x" * 513],
)
def test_a_last_that_no_name_can_be_is_400(client: httpx.Client, tagged: str, last: str) -> None:
    for path in (f"/v2/{tagged}/tags/list", "/v2/_catalog"):
        for params in ({"last": last}, {"n": "2", "last": last}):
            assert_oci_error(client.get(path, params=params), 400, "UNSUPPORTED")


@pytest.mark.parametrize("raw", ["last=%FF", "last=%ED%A0%80", "last=%C3", "n=%00", "n=-1"])
def test_undecodable_query_is_400(client: httpx.Client, tagged: str, raw: str) -> None:
    response = client.get(f"/v2/{tagged}/tags/list?{raw}")
    assert_oci_error(response, 400, "UNSUPPORTED")


# -- catalog


@pytest.fixture
def catalog(server: RegistryProcess) -> Iterator[httpx.Client]:
    token = fetch_token(server.url, ["registry:catalog:*"])
    with httpx.Client(base_url=server.url, headers=bearer(token), timeout=60) as http:
        yield http


def test_catalog_pages_cover_every_repository_once(
    client: httpx.Client, catalog: httpx.Client
) -> None:
    prefix = f"cat{next(_names)}"
    leaves = ["a", "a/b", "a-b", "a.b", "a_b", "a0", "b", "b/c/d", "c"]
    names = sorted(f"{prefix}/{leaf}" for leaf in leaves)
    for name in names:
        push_image(client, name)
    everything = [name for page in walk(catalog, "/v2/_catalog", "repositories") for name in page]
    assert everything == sorted(set(everything))
    assert [name for name in everything if name.startswith(f"{prefix}/")] == names
    # A page that starts inside the prefix, with a cursor that is no repository.
    response = catalog.get("/v2/_catalog", params={"n": 3, "last": f"{prefix}/a/"})
    assert response.json()["repositories"] == [n for n in names if n > f"{prefix}/a/"][:3]


def test_full_listing_without_n_is_the_whole_list_by_link(
    client: httpx.Client, server: RegistryProcess
) -> None:
    name = f"listing/many{next(_names)}"
    image = push_image(client, name)
    tags = [f"t{k:03d}" for k in range(2 * UNPAGED + 3)]
    for tag in tags:
        response = client.put(
            f"/v2/{name}/manifests/{tag}",
            content=image.body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert response.status_code == 201
    pages = walk(client, f"/v2/{name}/tags/list", "tags")
    assert [len(page) for page in pages] == [UNPAGED, UNPAGED, 3]
    assert [tag for page in pages for tag in page] == tags


def test_catalog_after_the_last_repository_is_empty(catalog: httpx.Client) -> None:
    response = catalog.get("/v2/_catalog", params={"last": "~"})
    assert response.status_code == 200
    assert response.json() == {"repositories": []}
    assert "Link" not in response.headers
