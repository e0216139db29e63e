"""docs/security.md states the role matrix; it must say what the code does."""

from __future__ import annotations

from pathlib import Path

from moorage.domain.access import ROLE_ACTIONS, Action, Role

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_role_matrix_in_the_document_matches_the_code() -> None:
    rows: dict[str, list[str]] = {}
    header: list[str] = []
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] == "action":
            header = cells[1:]
        elif header and cells and cells[0].startswith("`") and len(cells) == len(header) + 1:
            rows[cells[0].strip("`")] = cells[1:]
    assert header == [role.value for role in Role]
    assert set(rows) == {action.value for action in Action}
    for action, marks in rows.items():
        for role, mark in zip(header, marks, strict=True):
            assert (mark == "✔") == (Action(action) in ROLE_ACTIONS[Role(role)]), (action, role)
