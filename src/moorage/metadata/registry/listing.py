"""Keyset pages of names (tags of a repository, repositories), in byte order.

A page is `WHERE <key> > :last ORDER BY <key> LIMIT :n` on the index whose order is the listing
order (the tags' primary key (repository_id, name), the repositories' unique name), so its cost
is the page's, however many names come before or after it. The order is the bytes' order: the
name columns have the "C" collation on PostgreSQL, and SQLite's default (BINARY) compares bytes.

The database joins the page's names into one string: a 10,000-name page then crosses into Python
as one value instead of 10,000 rows, whose per-row machinery (the driver's and SQLAlchemy's) was
most of the cost of a big page. The separator is a newline, which no tag or repository name may
contain (see moorage.domain.names).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Select, bindparam, func, select

_SEPARATOR = "\n"


def _joined_page(key: Column[str], scope: list[ColumnElement[bool]], after: bool) -> Select[Any]:
    names = select(key).where(*scope)
    if after:
        names = names.where(key > bindparam("last"))
    page = names.order_by(key).limit(bindparam("limit")).subquery()
    return select(func.aggregate_strings(page.c[key.name], _SEPARATOR))


def page_query(key: Column[str], *, after: bool) -> Select[Any]:
    """The names of one page of a whole table, joined; binds `limit`, and `last` if `after`."""
    return _joined_page(key, [], after)


def owned_page_query(
    owner_id: ColumnElement[int], owner_column: Column[int], key: Column[str], *, after: bool
) -> Select[Any]:
    """(the owner's id or NULL, its page joined) in one statement: a listing of an owner that
    does not exist is told apart from an empty one without a second round trip. The owner
    column and `key` must be the leading columns of one index."""
    page = _joined_page(key, [owner_column == owner_id], after).scalar_subquery()
    return select(owner_id, page)


def split_page(joined: str | None) -> list[str]:
    if not joined:
        return []
    names = joined.split(_SEPARATOR)
    # SQLite before 3.44 takes no ORDER BY inside an aggregate, so the subquery's order is not a
    # promise there: sorting an already sorted list is one linear pass, and str order is the
    # bytes' order for UTF-8.
    names.sort()
    return names


def read_page(
    connection: Connection, query: Select[Any], parameters: dict[str, object]
) -> list[str]:
    joined: str | None = connection.execute(query, parameters).scalar()
    return split_page(joined)


def read_owned_page(
    connection: Connection, query: Select[Any], parameters: dict[str, object]
) -> list[str] | None:
    """The page of an `owned_page_query`; None when the owner does not exist."""
    owner, joined = connection.execute(query, parameters).one()
    if owner is None:
        return None
    return split_page(joined)
