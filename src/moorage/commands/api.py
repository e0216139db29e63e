"""Commands that run a management API route in this process (see `moorage.http.local`).

`api_command` turns one route into a command: its path parameters become arguments, the fields
of its body and query models become options (`--severity`, `--block-unscanned/--no-...`),
secrets are read from standard input and PEM fields from files, and `--from-file` takes the
whole JSON body as the API takes it. The body is checked by the API's own model, so a bad value
or an unknown field is refused with the API's message. Every command prints a table with `rich`,
or the API's JSON with `--output json`; refusals go to standard error (as the API's problem
JSON with `--output json`) with exit status 1.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

import click
from pydantic import AwareDatetime, BaseModel
from pydantic.alias_generators import to_camel

from moorage.commands.common import cli_actor, config_option, data_dir_option, load_cli_settings

# Fields whose values are secrets: never on the command line (other users see it in `ps`).
SECRET_FIELDS = frozenset({"password", "token", "credential", "new_password", "current_password"})
# Fields that carry PEM documents: given as files.
FILE_FIELDS = frozenset({"ca_bundle", "client_cert", "client_key", "pem", "certificates"})
# Paging is followed to the end by the command; these would only cut the listing short.
PAGING_FIELDS = frozenset({"limit", "after", "before"})

output_option = click.option(
    "--output",
    "output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts (the API's JSON).",
)

# The listings that predate this module print tab-separated lines by default, as scripts expect.
text_output_option = click.option(
    "--output",
    "output",
    type=click.Choice(["text", "table", "json"]),
    default="text",
    show_default=True,
    help="text: tab-separated lines; table for people; json for scripts (the API's JSON).",
)

Done = str | Callable[[Mapping[str, Any], Any], str] | None

# Which API routes each command runs: the parity test checks every API operation against it.
COMMAND_ROUTES: dict[click.Command, list[tuple[str, str]]] = {}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # the Python name, e.g. block_unscanned
    alias: str  # the JSON name, e.g. blockUnscanned
    kind: Literal["bool", "int", "float", "str", "many", "json", "secret", "file"]
    help: str

    @property
    def option(self) -> str:
        return self.name.replace("_", "-")


class CommandError(Exception):
    """Input the command cannot even send (unreadable JSON): reported like a refusal."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _unwrap(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _unwrap(present[0]) if len(present) == 1 else annotation
    if hasattr(annotation, "__metadata__"):  # Annotated[...]
        return _unwrap(get_args(annotation)[0])
    return annotation


def _kind(name: str, annotation: Any) -> Any:
    if name in SECRET_FIELDS:
        return "secret"
    if name in FILE_FIELDS:
        return "file"
    annotation = _unwrap(annotation)
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if get_origin(annotation) is Literal or annotation is str:
        return "str"
    if isinstance(annotation, type) and issubclass(
        annotation, str | enum.Enum | datetime.datetime | datetime.date
    ):
        return "str"
    if annotation is AwareDatetime:
        return "str"
    if get_origin(annotation) in (list, tuple) and _kind("", get_args(annotation)[0]) == "str":
        return "many"
    return "json"


def model_fields(model: type[BaseModel] | None, skip: frozenset[str] = frozenset()) -> list[_Field]:
    if model is None:
        return []
    return [
        _Field(name, to_camel(name), _kind(name, info.annotation), info.description or "")
        for name, info in model.model_fields.items()
        if name not in skip
    ]


def _option(field: _Field, param: str) -> Callable[[Any], Any]:
    text = field.help
    if field.kind == "bool":
        return click.option(f"--{field.option}/--no-{field.option}", param, default=None, help=text)
    if field.kind == "secret":
        return click.option(
            f"--{field.option}-stdin",
            param,
            is_flag=True,
            default=False,
            help=f"Read {field.name.replace('_', ' ')} from standard input. {text}".strip(),
        )
    if field.kind == "file":
        return click.option(
            f"--{field.option}",
            param,
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help=f"File with the PEM text. {text}".strip(),
        )
    if field.kind == "many":
        return click.option(
            f"--{field.option}", param, multiple=True, help=f"{text} (repeatable)".strip()
        )
    if field.kind == "json":
        return click.option(f"--{field.option}", param, metavar="JSON", help=text)
    types_ = {"int": int, "float": float, "str": str}
    return click.option(f"--{field.option}", param, type=types_[field.kind], help=text)


def _value(field: _Field, given: Any) -> Any:
    """The JSON value of an option, or None when it was left out."""
    if given is None or (given is False and field.kind == "secret"):
        return None
    if field.kind == "many":
        return list(given) if given else None
    if field.kind == "secret":
        return sys.stdin.readline().rstrip("\r\n")
    if field.kind == "file":
        return Path(given).read_text(encoding="utf-8")
    if field.kind == "json":
        try:
            return json.loads(given)
        except json.JSONDecodeError:
            raise CommandError(f"--{field.option} is not valid JSON") from None
    return given


def _read_body(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot read {source}: {error.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise CommandError(f"{source} is not valid JSON") from None
    if not isinstance(document, dict):
        raise CommandError(f"{source} does not hold a JSON object")
    return document


def api_command(
    group: click.Group,
    name: str,
    method: str,
    path: str,
    *,
    help: str | None = None,
    done: Done = None,
    columns: Sequence[str] | None = None,
    arguments: Mapping[str, str] | None = None,
) -> click.Command:
    """Add a command to `group` that runs the route `method path`.

    `done` is the message of a mutation (formatted with the parameters and options), `columns`
    the table's columns for a listing, and `arguments` the metavars of path parameters.
    """
    from moorage.http.local import path_parameters, route

    declared = route(method, path)
    names = path_parameters(path)
    body_fields = model_fields(declared.body)
    query_fields = model_fields(declared.query, PAGING_FIELDS)
    taken = {*names, "output", "from_file", "config", "data_dir"}
    body_params = {f"body_{f.name}" if f.name in taken else f.name: f for f in body_fields}
    query_params = {f"query_{f.name}" if f.name in taken else f.name: f for f in query_fields}

    def run(**given: Any) -> None:
        output: str = given.pop("output")
        settings = load_cli_settings(given.pop("config"), data_dir=given.pop("data_dir"))
        try:
            params = {p: str(given[p]) for p in names if given.get(p) is not None}
            body: dict[str, Any] | None = None
            if declared.body is not None:
                source = given.get("from_file")
                body = _read_body(source) if source else {}
                for param, field in body_params.items():
                    value = _value(field, given[param])
                    if value is not None:
                        body[field.alias] = value
            query = {
                field.alias: _query_text(value)
                for param, field in query_params.items()
                if (value := _value(field, given[param])) is not None
            }
        except CommandError as error:
            fail(output, 400, error.detail)
        result = execute(output, settings, method, path, params, body, query)
        context = {**params, **{p: v for p, v in given.items() if v is not None}}
        for field in body_fields:
            if body is not None and field.alias in body and field.kind != "secret":
                context.setdefault(field.name, body[field.alias])
        show(result, output, _message(done, context, result), columns)

    function: Callable[..., Any] = run
    function = output_option(function)
    if declared.body is not None:
        function = click.option(
            "--from-file",
            "from_file",
            metavar="FILE",
            help="The JSON body as the API takes it ('-': standard input); options override it.",
        )(function)
    for param, field in reversed([*body_params.items(), *query_params.items()]):
        function = _option(field, param)(function)
    for param in reversed(names):
        metavar = (arguments or {}).get(param, param.upper())
        function = click.argument(param, metavar=metavar)(function)
    function = config_option(data_dir_option(function))
    command = group.command(name, help=help or f"{declared.summary}.")(function)
    COMMAND_ROUTES[command] = [(method, path)]
    return command


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def execute(
    output: str,
    settings: Any,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: Mapping[str, Any] | None = None,
    query: Mapping[str, str] | None = None,
) -> Any:
    """`run_route`, with a refusal reported (`fail`) instead of raised."""
    from moorage.http.local import LocalApiError

    try:
        return run_route(settings, method, path, params, body, query)
    except LocalApiError as error:
        fail(output, error.status, error.detail, error.errors, error.code)


def listing(
    output: str,
    settings: Any,
    path: str,
    params: Sequence[Mapping[str, str]] = ({},),
    columns: Sequence[str] | None = None,
) -> bool:
    """Print what `GET path` answers (for each of `params`, as one list when there are
    several) as a table or JSON; False when the tab-separated text is asked for instead."""
    if output == "text":
        return False
    result = execute_each(output, settings, "GET", path, params)
    show(result[0] if len(params) == 1 else result, output, None, columns)
    return True


def execute_each(
    output: str, settings: Any, method: str, path: str, params: Sequence[Mapping[str, str]]
) -> list[Any]:
    """`execute` for several parameter sets, in one application."""
    from moorage.commands.common import services
    from moorage.http.local import LocalApiError, local_api

    with services(settings):
        pass  # migrates the schema, as `run_route` does

    async def calls() -> list[Any]:
        async with local_api(settings, cli_actor()) as api:
            return [await api.call(method, path, each) for each in params]

    try:
        return asyncio.run(calls())
    except LocalApiError as error:
        fail(output, error.status, error.detail, error.errors, error.code)


def run_route(
    settings: Any,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: Mapping[str, Any] | None,
    query: Mapping[str, str] | None,
) -> Any:
    """Run one API route against the data directory, as the host's operator."""
    from moorage.commands.common import services
    from moorage.http.local import local_api

    with services(settings):
        pass  # migrates the schema and creates the signing key if this is a new data directory

    async def call() -> Any:
        async with local_api(settings, cli_actor()) as api:
            return await api.call(method, path, params, body, query)

    return asyncio.run(call())


def _message(done: Done, context: Mapping[str, Any], result: Any) -> str | None:
    if done is None:
        return None
    if callable(done):
        return done(context, result)
    values = _Values(context)
    if isinstance(result, dict):
        values |= {f"result_{key}": value for key, value in result.items()}
    return done.format_map(values)


class _Values(dict[str, Any]):
    """A message's values; one that is missing reads as `?` rather than failing a command
    whose change is already made."""

    def __missing__(self, key: str) -> str:
        return "?"


def fail(
    output: str,
    status: int,
    detail: str,
    errors: Sequence[Mapping[str, str]] | None = None,
    code: str | None = None,
) -> NoReturn:
    """Report a refusal on standard error and exit with status 1."""
    if output == "json":
        document: dict[str, Any] = {"status": status, "detail": detail}
        if code is not None:
            document["code"] = code
        if errors is not None:
            document["errors"] = [dict(item) for item in errors]
        click.echo(json.dumps(document, indent=2), err=True)
    else:
        click.echo(f"Error: {detail}", err=True)
        for item in errors or ():
            click.echo(f"  {item.get('field', '')}: {item.get('message', '')}", err=True)
    sys.exit(1)


def show(result: Any, output: str, message: str | None, columns: Sequence[str] | None) -> None:
    """The answer: JSON on stdout, or the change and a table; downloads as they are."""
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
        sys.stdout.flush()
        return
    if output == "json":
        if message is not None:
            click.echo(message, err=True)
        document = {"message": message} if result is None and message is not None else result
        click.echo(json.dumps(document, indent=2))
        return
    if message is not None:
        click.echo(message)
    if result is not None:
        render_table(result, columns)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(isinstance(item, str | int) for item in value):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render_table(result: Any, columns: Sequence[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    if isinstance(result, list):
        if not result:
            console.print("(none)")
            return
        keys = list(columns) if columns else list(dict.fromkeys(k for row in result for k in row))
        table = Table(*keys, show_lines=False)
        for row in result:
            table.add_row(*(_cell(row.get(key)) for key in keys))
    else:
        table = Table("field", "value", show_header=False)
        for key, value in result.items():
            if columns is None or key in columns:
                table.add_row(key, _cell(value))
    console.print(table)
