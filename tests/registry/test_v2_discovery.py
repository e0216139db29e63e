"""Content discovery: tag listing, the catalog and their pagination."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.api import PASSWORD, api_client, create_project, create_user, set_role
from tests.support.oci import (
    OCI_MANIFEST,
    assert_oci_error,
    bearer,
    fetch_token,
    push_image,
    put_manifest,
)
from tests.support.server import RegistryProcess

# ASCII byte order: digits < uppercase < underscore < lowercase, and "v1.10" < "v1.9".
UNSORTED_TAGS = ["v1.9", "latest", "B", "a", "A1", "v1.10", "_x", "0", "Z", "a-b", "a.b", "a_b"]


def tag_all(client: httpx.Client, repo: str, tags: list[str]) -> None:
    image = push_image(client, repo)
    for tag in tags:
        assert put_manifest(client, repo, tag, image.body, OCI_MANIFEST).status_code == 201


def next_link(response: httpx.Response) -> str | None:
    """The target of a `rel="next"` Link header, checking its RFC 8288 form."""
    value = response.headers.get("Link")
    if value is None:
        return None
    assert value.startswith("<"), value
    assert value.endswith('>; rel="next"'), value
    target = value[1 : value.index(">")]
    assert target.startswith("/v2/"), target
    return target


def walk_links(client: httpx.Client, first: str, key: str) -> tuple[list[str], int]:
    """Follow Link headers from `first`; every listed item, and how many pages were read."""
    items: list[str] = []
    pages = 0
    path: str | None = first
    while path is not None:
        response = client.get(path)
        assert response.status_code == 200, response.text
        page = response.json()[key]
        pages += 1
        path = next_link(response)
        if path is not None:
            # Only a page with more after it links onwards, and never to an empty page.
            assert page, "a Link header led to an empty page"
        items.extend(page)
        assert pages < 1000, "pagination does not terminate"
    return items, pages


# -- tags


def test_tags_are_listed_in_ascii_order(client: httpx.Client, repo: str) -> None:
    tag_all(client, repo, UNSORTED_TAGS)
    response = client.get(f"/v2/{repo}/tags/list")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"name": repo, "tags": sorted(UNSORTED_TAGS)}
    assert sorted(UNSORTED_TAGS)[:4] == ["0", "A1", "B", "Z"]
    assert "Link" not in response.headers


def test_tags_of_a_repository_without_tags_is_empty(client: httpx.Client, repo: str) -> None:
    push_image(client, repo)
    response = client.get(f"/v2/{repo}/tags/list")
    assert response.status_code == 200
    assert response.json() == {"name": repo, "tags": []}


@pytest.mark.parametrize("page_size", [1, 2, 5, 6, 11, 12, 13])
def test_tag_pages_via_link_header_cover_every_tag_once(
    client: httpx.Client, repo: str, page_size: int
) -> None:
    tag_all(client, repo, UNSORTED_TAGS)
    tags, pages = walk_links(client, f"/v2/{repo}/tags/list?n={page_size}", "tags")
    assert tags == sorted(UNSORTED_TAGS)
    assert pages == -(-len(UNSORTED_TAGS) // page_size)


def test_link_header_carries_n_and_last(client: httpx.Client, repo: str) -> None:
    tag_all(client, repo, ["a", "b", "c"])
    response = client.get(f"/v2/{repo}/tags/list", params={"n": 2})
    assert response.json()["tags"] == ["a", "b"]
    link = next_link(response)
    assert link is not None
    assert urlsplit(link).path == f"/v2/{repo}/tags/list"
    assert parse_qs(urlsplit(link).query) == {"n": ["2"], "last": ["b"]}


def test_tag_pages_via_last(client: httpx.Client, repo: str) -> None:
    tag_all(client, repo, UNSORTED_TAGS)
    expected = sorted(UNSORTED_TAGS)
    collected: list[str] = []
    last: str | None = None
    while True:
        params: dict[str, str | int] = {"n": 5}
        if last is not None:
            params["last"] = last
        page = client.get(f"/v2/{repo}/tags/list", params=params).json()["tags"]
        if not page:
            break
        collected.extend(page)
        last = page[-1]
    assert collected == expected


def test_last_need_not_be_an_existing_tag(client: httpx.Client, repo: str) -> None:
    tag_all(client, repo, ["a", "c", "e"])
    response = client.get(f"/v2/{repo}/tags/list", params={"last": "b"})
    assert response.json()["tags"] == ["c", "e"]
    response = client.get(f"/v2/{repo}/tags/list", params={"last": "e"})
    assert response.json()["tags"] == []


def test_n_zero_lists_nothing_without_link(client: httpx.Client, repo: str) -> None:
    tag_all(client, repo, ["a", "b"])
    response = client.get(f"/v2/{repo}/tags/list", params={"n": 0})
    assert response.status_code == 200
    assert response.json() == {"name": repo, "tags": []}
    assert "Link" not in response.headers


@pytest.mark.parametrize(
    # Non-ASCII digits ("²", "٣") pass str.isdigit() but are no decimal numbers.
    "n",
    ["-1", "abc", "1.5", "1e3", " 1", "+1", "0x10", "9999999999999", "\u00b2", "\u0663"],
)
def test_invalid_n_is_400_with_an_oci_error(client: httpx.Client, repo: str, n: str) -> None:
    tag_all(client, repo, ["a"])
    assert_oci_error(client.get(f"/v2/{repo}/tags/list", params={"n": n}), 400, "UNSUPPORTED")
    assert_oci_error(client.get("/v2/_catalog", params={"n": n}), 400, "UNSUPPORTED")


def test_tags_of_unknown_repository_is_name_unknown(client: httpx.Client, repo: str) -> None:
    for params in ({}, {"n": "0"}, {"n": "5", "last": "a"}):
        response = client.get(f"/v2/{repo}/tags/list", params=params)
        assert_oci_error(response, 404, "NAME_UNKNOWN")


def test_n_above_the_cap_is_capped_to_1000(client: httpx.Client, repo: str) -> None:
    tags = [f"t{i:04d}" for i in range(1001)]
    tag_all(client, repo, tags)
    response = client.get(f"/v2/{repo}/tags/list", params={"n": 5000})
    assert response.status_code == 200
    assert response.json()["tags"] == tags[:1000]
    assert next_link(response) == f"/v2/{repo}/tags/list?n=1000&last=t0999"
    # Without n the whole list is asked for: up to `unpaged_listing_size` (10,000) at once.
    response = client.get(f"/v2/{repo}/tags/list")
    assert response.json()["tags"] == tags
    assert "Link" not in response.headers
    rest = client.get(f"/v2/{repo}/tags/list", params={"n": 1000, "last": "t0999"})
    assert rest.json()["tags"] == ["t1000"]
    assert "Link" not in rest.headers


def test_deleted_tag_leaves_the_listing(client: httpx.Client, repo: str) -> None:
    tag_all(client, repo, ["a", "b"])
    assert client.delete(f"/v2/{repo}/manifests/a").status_code == 202
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["b"]


# -- catalog


@pytest.fixture
def admin_catalog(registry: RegistryProcess) -> Iterator[httpx.Client]:
    """The administrator with a catalog token: the catalog is filtered per caller, and only an
    administrator sees every repository (other tests' too)."""
    token = fetch_token(registry.url, ["registry:catalog:*"])
    with httpx.Client(base_url=registry.url, headers=bearer(token), timeout=60) as http:
        yield http


@pytest.fixture
def catalog_names(client: httpx.Client) -> list[str]:
    """Repositories under a fresh prefix (so other tests' repositories sort elsewhere)."""
    prefix = f"catalog-{uuid.uuid4().hex}"
    names = [f"{prefix}/{leaf}" for leaf in ("b", "a", "a/deep", "c0", "c-1", "c_2")]
    for name in names:
        push_image(client, name)
    return sorted(names)


def catalog_after(client: httpx.Client, last: str, n: int) -> httpx.Response:
    response = client.get("/v2/_catalog", params={"n": n, "last": last})
    assert response.status_code == 200, response.text
    return response


def test_catalog_lists_repositories_in_order(
    admin_catalog: httpx.Client, catalog_names: list[str]
) -> None:
    prefix = catalog_names[0].split("/")[0]
    # "/" sorts after "-" but before "0", so every name of this prefix follows `prefix`.
    response = catalog_after(admin_catalog, prefix, len(catalog_names))
    assert response.json() == {"repositories": catalog_names}


def test_catalog_pages_via_link_header(
    admin_catalog: httpx.Client, catalog_names: list[str]
) -> None:
    prefix = catalog_names[0].split("/")[0]
    first = catalog_after(admin_catalog, prefix, 2)
    assert first.json()["repositories"] == catalog_names[:2]
    link = next_link(first)
    assert link is not None
    assert parse_qs(urlsplit(link).query) == {"n": ["2"], "last": [catalog_names[1]]}
    collected = list(catalog_names[:2])
    while len(collected) < len(catalog_names):
        assert link is not None
        response = admin_catalog.get(link)
        assert response.status_code == 200
        collected.extend(response.json()["repositories"])
        link = next_link(response)
    assert collected[: len(catalog_names)] == catalog_names


def test_catalog_n_zero_is_empty(admin_catalog: httpx.Client, catalog_names: list[str]) -> None:
    response = admin_catalog.get("/v2/_catalog", params={"n": 0})
    assert response.status_code == 200
    assert response.json() == {"repositories": []}
    assert "Link" not in response.headers


def test_catalog_is_sorted_and_unique(
    admin_catalog: httpx.Client, catalog_names: list[str]
) -> None:
    names, _ = walk_links(admin_catalog, "/v2/_catalog?n=7", "repositories")
    assert names == sorted(set(names))
    assert set(catalog_names) <= set(names)


def test_catalog_is_filtered_to_what_the_caller_may_pull(
    registry: RegistryProcess, client: httpx.Client
) -> None:
    """A member sees its project's repositories (pages still link on), a stranger and an
    anonymous caller see only public ones; the filter is the one a pull uses."""
    with api_client(registry) as admin:
        mine, hidden, public = (
            create_project(admin, "cat"),
            create_project(admin, "cat"),
            create_project(admin, "cat", public=True),
        )
        member, stranger = create_user(admin, "member"), create_user(admin, "stranger")
        set_role(admin, mine, member, "limited-guest")
    repositories = {
        project: [f"{project}/{leaf}" for leaf in ("a", "b", "c")]
        for project in (mine, hidden, public)
    }
    for names in repositories.values():
        for name in names:
            push_image(client, name)
    ours = set().union(*repositories.values())
    expected: dict[tuple[str, str] | None, list[str]] = {
        (member, PASSWORD): sorted(repositories[mine] + repositories[public]),
        (stranger, PASSWORD): repositories[public],
        None: repositories[public],
    }
    for credentials, visible in expected.items():
        token = fetch_token(registry.url, ["registry:catalog:*"], credentials)
        with httpx.Client(base_url=registry.url, headers=bearer(token), timeout=60) as http:
            names, _ = walk_links(http, "/v2/_catalog?n=2", "repositories")
        assert [name for name in names if name in ours] == visible, credentials
