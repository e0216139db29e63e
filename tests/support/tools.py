"""External tools the tests drive: skipped when missing on a developer's machine, a failure
when scripts/test runs the suite, which installs them all and sets REQUIRE_TEST_TOOLS=1.

Mark tests with `@pytest.mark.tools("skopeo", ...)` (conftest.py checks the marker), or call
`require_tool` / `require_module` where the need is found at run time."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

# Not MOORAGE_*: the server and the CLI refuse unknown variables with that prefix.
REQUIRED_VARIABLE = "REQUIRE_TEST_TOOLS"


def tools_required() -> bool:
    return os.environ.get(REQUIRED_VARIABLE, "") not in ("", "0")


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when every tool is required: a CI run must not pass by skipping."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRED_VARIABLE} is set)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def missing_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def require_tool(*tools: str) -> None:
    missing = missing_tools(*tools)
    if missing:
        unavailable(f"not on PATH: {', '.join(missing)}")


def require_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        unavailable(f"the Python module {name} cannot be imported: {error}")


def have_tool(tool: str) -> bool:
    """For an optional extra check: False without the tool, but a failure where every tool
    is required."""
    if shutil.which(tool) is not None:
        return True
    if tools_required():
        pytest.fail(f"not on PATH: {tool} ({REQUIRED_VARIABLE} is set)", pytrace=False)
    return False
