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

from sqlalchemy import Column, Connection, Select, bindparam, func, select

_SEPARATOR = "\n"


def page_query(key: Column[str], *scope: object, after: bool) -> Select[Any]:
    """The names of one page, joined; binds `limit`, and `last` when `after`.

    `scope` narrows the rows (e.g. one repository's tags) so that `key` is the next column of
    the index.
    """
    names = select(key).where(*scope)  # type: ignore[arg-type]
    if after:
        names = names.where(key > bindparam("last"))
    page = names.order_by(key).limit(bindparam("limit")).subquery()
    return select(func.aggregate_strings(page.c[key.name], _SEPARATOR))


def read_page(
    connection: Connection, query: Select[Any], parameters: dict[str, object]
) -> list[str]:
    joined: str | None = connection.execute(query, parameters).scalar()
    if not joined:
        return []
    names = joined.split(_SEPARATOR)
    # SQLite before 3.44 takes no ORDER BY inside an aggregate, so the subquery's order is not a
    # promise there: sorting an already sorted list is one linear pass, and str order is the
    # bytes' order for UTF-8.
    names.sort()
    return names
