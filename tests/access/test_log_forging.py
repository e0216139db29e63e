"""No input can forge a log record: every line of the server's log is exactly one record.

A caller controls user names (Basic, the OAuth2 form, personal access tokens, robots), request
targets, headers and the token service's fields. Each carries a line break or a terminal escape
followed by a complete fake record; the log must hold each input escaped inside a real record
and never a line that is the fake one.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import pytest

from moorage.logs import JsonFormatter, TextFormatter, configure, escape, quote_field
from tests.support.server import RegistryProcess
from tests.support.wait import wait_until

# -- what the attacker sends

# name -> (raw sequence, how the text log must show it)
SEQUENCES: dict[str, tuple[str, str]] = {
    "lf": ("\n", "\\n"),
    "cr": ("\r", "\\r"),
    "crlf": ("\r\n", "\\r\\n"),
    "nul": ("\x00", "\\x00"),
    "csi": ("\x1b[2J", "\\x1b[2J"),
    "osc": ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    "ls": ("\u2028", "\\u2028"),
    "nel": ("\x85", "\\x85"),
}

FORGED_TEXT = "2099-01-01 00:00:00,000 INFO [1] moorage.events: user:delete success actor=admin"
FORGED_JSON = (
    '{"time": "2099-01-01T00:00:00.000+00:00", "level": "INFO", "logger": "moorage.events",'
    ' "process": 1, "message": "user:delete success actor=admin"}'
)
FORGED = {"text": FORGED_TEXT, "json": FORGED_JSON}


def payload(mode: str, where: str, sequence: str) -> str:
    """A marker naming the case, the hostile sequence, then a whole fake record."""
    return f"forge-{where}-{sequence}{SEQUENCES[sequence][0]}{FORGED[mode]}"


def escaped_payload(where: str, sequence: str) -> str:
    return f"forge-{where}-{sequence}{SEQUENCES[sequence][1]}{FORGED_TEXT}"


# -- reading the log back

RECORD = re.compile(
    r"(?P<time>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3})"
    r" (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] (?P<logger>[A-Za-z0-9_.]+): "
)
CONTINUATION = "  | "
JSON_KEYS = {"time", "level", "logger", "process", "message"}


def unsafe_characters(line: str) -> list[str]:
    """Characters no log line may hold raw: controls, line and paragraph separators, bidi
    overrides and isolates, lone surrogates."""
    return [
        char
        for char in line
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")
        or "\u202a" <= char <= "\u202e"
        or "\u2066" <= char <= "\u2069"
    ]


@dataclass
class Record:
    time: str
    logger: str
    text: str  # the whole record line (text) or the JSON line
    fields: dict[str, object]


def parse_text_log(log: str) -> list[Record]:
    """Every line is a record line or a traceback line under a record; nothing else."""
    records: list[Record] = []
    for number, line in enumerate(log.split("\n")[:-1], 1):
        assert not unsafe_characters(line), (number, line)
        if line.startswith(CONTINUATION):
            assert records, f"line {number} continues no record: {line!r}"
            continue
        match = RECORD.match(line)
        assert match, f"line {number} is not a record: {line!r}"
        records.append(Record(match["time"], match["logger"], line, {}))
    assert log.endswith("\n")
    return records


def parse_json_log(log: str) -> list[Record]:
    """Every line is exactly one JSON object with the record's fields, in ASCII."""
    records: list[Record] = []
    for number, line in enumerate(log.split("\n")[:-1], 1):
        assert line.isascii(), (number, line)
        entry = json.loads(line)
        assert isinstance(entry, dict), (number, line)
        assert entry.keys() >= JSON_KEYS, (number, line)
        records.append(Record(entry["time"], entry["logger"], line, entry))
    assert log.endswith("\n")
    return records


# -- talking to the server byte by byte (HTTP clients refuse to send most of this)


def raw_request(
    port: int,
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> int:
    """Send one HTTP/1.1 request as given; the status, or 0 when the server just closed."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: 127.0.0.1:{port}".encode()]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Connection: close", f"Content-Length: {len(body)}".encode(), b"", b""]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"\r\n".join(lines) + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0].split(b" ")
    return int(status[1]) if len(status) > 1 and status[1].isdigit() else 0


def basic(username: str, password: str) -> tuple[bytes, bytes]:
    encoded = base64.b64encode(f"{username}:{password}".encode())
    return (b"Authorization", b"Basic " + encoded)


def form(fields: dict[str, str]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    return headers, urlencode(fields).encode()


# Inputs that reach a log message: sign-in failures name the user (a Basic user name ends at
# its first colon), the access log has the request target (as received: percent-encoded), the
# Referer and the User-Agent.
SIGN_INS = ("oauth", "basic", "api-basic", "pat", "robot")
BASIC = ("basic", "api-basic", "pat", "robot")
ACCESS = ("path", "user-agent", "referer")
# The HTTP parser refuses these bytes in a header value before any handler runs.
REFUSED_IN_HEADERS = ("lf", "cr", "crlf", "nul", "csi", "osc")
SENTINEL = "/v2/?end-of-hostile-input"


def send_hostile_input(server: RegistryProcess, mode: str) -> None:
    port = server.port
    token = b"/service/token?service=moorage&scope=repository%3Alibrary%2Fapp%3Apull"
    for name in SEQUENCES:

        def value(where: str, sequence: str = name) -> str:
            return payload(mode, where, sequence)

        headers, body = form(
            {
                "grant_type": "password",
                "username": value("oauth"),
                "password": "not-the-password",
                "service": "moorage",
                "client_id": value("client-id"),
                "scope": "repository:library/app:pull",
            }
        )
        assert raw_request(port, "POST", b"/service/token", headers, body) == 401
        headers, body = form(
            {
                "grant_type": "refresh_token",
                "refresh_token": value("refresh-token"),
                "service": value("service"),
                "scope": value("scope"),
                "client_id": "docker",
            }
        )
        assert raw_request(port, "POST", b"/service/token", headers, body) in (400, 401)
        assert raw_request(port, "GET", token, [basic(value("basic"), "wrong-password")]) == 401
        secret = "mpat_forged_" + "a" * 43
        assert raw_request(port, "GET", token, [basic(value("pat"), secret)]) == 401
        assert raw_request(port, "GET", token, [basic("robot$" + value("robot"), "x")]) == 401
        api = b"/api/v1/users/me"
        assert raw_request(port, "GET", api, [basic(value("api-basic"), "wrong-password")]) == 401
        hostile_scope = quote(f"repository:{value('token-scope')}:pull", safe="").encode()
        raw_request(port, "GET", b"/service/token?service=moorage&scope=" + hostile_scope)
        hostile_service = quote(value("token-service"), safe="").encode()
        raw_request(port, "GET", b"/service/token?service=" + hostile_service)
        # The path arrives percent-encoded; the application sees it decoded.
        path = quote(value("path"), safe="").encode()
        raw_request(port, "GET", b"/v2/" + path + b"/manifests/latest")
        raw_request(port, "GET", b"/api/v1/projects/" + path)
        # Header values as raw bytes: the HTTP parser may refuse control characters (400),
        # and what it accepts must be logged safely.
        raw_request(port, "GET", b"/v2/", [(b"User-Agent", value("user-agent").encode())])
        raw_request(port, "GET", b"/v2/", [(b"Referer", value("referer").encode())])
    # Bytes that are not UTF-8 reach the application as lone surrogates.
    raw_request(port, "GET", b"/v2/", [(b"User-Agent", b"forge-invalid-utf8-\xff\xfe")])
    assert raw_request(port, "GET", SENTINEL.encode()) == 401


def wait_for(server: RegistryProcess, text: str, timeout: float = 30.0) -> None:
    wait_until(
        lambda: text in server.logs(),
        timeout,
        lambda: f"{text!r} to reach the log:\n{server.logs()}",
    )


@pytest.fixture(scope="module", params=["text", "json"])
def hostile_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(mode, the whole log of a server that received every hostile input and stopped)."""
    mode: str = request.param
    # Text is asked for in the environment, JSON with the flag: both ways are covered.
    server = RegistryProcess(
        tmp_path_factory.mktemp(f"forging-{mode}") / "data",
        extra_args=["--log-format", "json"] if mode == "json" else [],
        env={
            **({"MOORAGE_LOG_FORMAT": "text"} if mode == "text" else {}),
            "MOORAGE_ACCESS_LOG": "true",
            # Every hostile sign-in fails; none of them may lock the test's address out.
            "MOORAGE_LOGIN_FAILURES_PER_ADDRESS": "100000",
        },
    ).start()
    try:
        send_hostile_input(server, mode)
        wait_for(server, "end-of-hostile-input")
    except BaseException:
        server.kill()
        raise
    assert server.stop() == 0
    return mode, server.logs()


def test_every_line_is_exactly_one_record(hostile_log: tuple[str, str]) -> None:
    mode, log = hostile_log
    records = parse_json_log(log) if mode == "json" else parse_text_log(log)
    assert len(records) > 100
    assert {record.logger for record in records} >= {"moorage.events", "moorage.access"}
    # The fake records all say 2099; no real record does.
    assert not [record.text for record in records if record.time.startswith("2099")]


def test_no_line_starts_with_forged_content(hostile_log: tuple[str, str]) -> None:
    mode, log = hostile_log
    for line in log.split("\n"):
        assert not line.startswith(FORGED[mode])
        assert not line.startswith("forge-")
        assert "\x1b" not in line


@pytest.mark.parametrize(
    ("where", "sequence"),
    [
        (where, sequence)
        for where in SIGN_INS + ACCESS
        for sequence in SEQUENCES
        # what the HTTP parser refuses is only in its error's traceback (see the line checks)
        if not (where in ("user-agent", "referer") and sequence in REFUSED_IN_HEADERS)
    ],
)
def test_hostile_input_is_logged_escaped_inside_its_record(
    hostile_log: tuple[str, str], where: str, sequence: str
) -> None:
    mode, log = hostile_log
    if mode == "text":
        records = parse_text_log(log)
        expected = escaped_payload(where, sequence)
    else:
        records = parse_json_log(log)
        expected = payload("json", where, sequence)  # JSON keeps the exact value
    if where == "path":
        expected = quote(payload(mode, where, sequence), safe="")
    elif where in BASIC:
        expected = expected.partition(":")[0]
    if mode == "text":
        matching = [record for record in records if expected in record.text]
    else:
        matching = [r for r in records if any(expected in str(v) for v in r.fields.values())]
    assert matching, f"forge-{where}-{sequence} is not in the log as {expected!r}"
    assert {record.logger for record in matching} == {
        "moorage.access" if where in ACCESS else "moorage.events"
    }


@pytest.mark.parametrize("hostile_log", ["json"], indirect=True)
def test_access_log_fields_are_structured_in_json(hostile_log: tuple[str, str]) -> None:
    _, log = hostile_log
    access = [r for r in parse_json_log(log) if r.logger == "moorage.access"]
    sentinel = [r for r in access if r.fields.get("target") == SENTINEL]
    assert len(sentinel) == 1
    assert sentinel[0].fields["method"] == "GET"
    assert sentinel[0].fields["status"] == 401
    invalid = [r for r in access if str(r.fields.get("user_agent", "")).startswith("forge-inv")]
    assert [r.fields["user_agent"] for r in invalid] == ["forge-invalid-utf8-\udcff\udcfe"]


@pytest.mark.parametrize("hostile_log", ["text"], indirect=True)
def test_invalid_utf8_is_escaped_in_text(hostile_log: tuple[str, str]) -> None:
    _, log = hostile_log
    assert '"forge-invalid-utf8-\\udcff\\udcfe"' in log


# -- the formatters on their own


def make_record(
    message: str,
    *args: object,
    name: str = "moorage.test",
    exc_info: logging._SysExcInfoType | None = None,
    extra: dict[str, object] | None = None,
) -> logging.LogRecord:
    record = logging.getLogger(name).makeRecord(
        name, logging.INFO, "file.py", 1, message, args, exc_info, extra=extra
    )
    return record


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        *SEQUENCES.values(),
        ("\t", "\\t"),
        ("\x7f", "\\x7f"),
        ("\x9b2J", "\\x9b2J"),  # the one-byte CSI
        ("\x0b\x0c", "\\x0b\\x0c"),
        ("\x1c\x1d\x1e", "\\x1c\\x1d\\x1e"),  # str.splitlines() breaks lines at these
        ("\u2029", "\\u2029"),
        ("\u202e", "\\u202e"),  # right-to-left override
        ("\u2066", "\\u2066"),
        ("\ufeff", "\\ufeff"),
        ("\udcff", "\\udcff"),
        ("plain ascii", "plain ascii"),
        ("é 日本 ü", "é 日本 ü"),  # printable characters stay readable
        ('back\\slash "quoted"', 'back\\slash "quoted"'),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert escape(raw) == shown
    assert escape(f"a{raw}b") == f"a{shown}b"


def test_text_record_escapes_message_and_arguments() -> None:
    record = make_record("login %s actor=%s", "failure\n", payload("text", "unit", "crlf"))
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith(
        f"INFO [{record.process}] moorage.test: login failure\\n actor=forge-unit-crlf\\r\\n"
        + FORGED_TEXT
    )
    assert RECORD.match(line)


def test_text_record_escapes_every_field() -> None:
    record = make_record("message", name="moorage.\x1b[31mred\nname")
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert "moorage.\\x1b[31mred\\nname: message" in line


def test_text_traceback_lines_stay_under_their_record() -> None:
    try:
        raise ValueError(f"bad name {payload('text', 'exception', 'lf')}\u2028more")
    except ValueError:
        record = make_record("failed on %s", "x\ny", exc_info=sys.exc_info())
    lines = TextFormatter().format(record).split("\n")
    assert RECORD.match(lines[0])
    assert lines[0].endswith("failed on x\\ny")
    assert lines[1] == "  | Traceback (most recent call last):"
    assert all(line.startswith("  | ") for line in lines[1:])
    # The exception's own line break ends its line; the fake record is on a traceback line.
    assert lines[-2] == "  | ValueError: bad name forge-exception-lf"
    assert lines[-1] == f"  | {FORGED_TEXT}\\u2028more"
    assert not [line for line in lines if unsafe_characters(line)]


def test_text_stack_info_is_indented_too() -> None:
    record = make_record("here")
    record.stack_info = 'Stack (most recent call last):\n  File "x.py"\n\x1b[2J'
    lines = TextFormatter().format(record).split("\n")
    assert lines[1:] == [
        "  | Stack (most recent call last):",
        '  |   File "x.py"',
        "  | \\x1b[2J",
    ]


def test_a_message_that_cannot_be_formatted_is_still_one_line() -> None:
    record = make_record("%s and %s", "only\none")
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert "unformattable log message '%s and %s' with arguments ('only\\none',)" in line
    entry = json.loads(JsonFormatter().format(record))
    assert (
        entry["message"] == "unformattable log message '%s and %s' with arguments ('only\\none',)"
    )


def test_json_record_is_one_ascii_line_holding_the_exact_values() -> None:
    hostile = "".join(raw for raw, _ in SEQUENCES.values()) + "\ud800\u2029é"
    record = make_record(
        "actor=%s", hostile, extra={"user_agent": hostile, "status": 401, "headers": {"a": "b"}}
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert line.isascii()
    entry = json.loads(line)
    assert entry["message"] == f"actor={hostile}"
    assert entry["user_agent"] == hostile
    assert entry["status"] == 401
    assert entry["headers"] == {"a": "b"}
    assert entry["level"] == "INFO"
    assert entry["logger"] == "moorage.test"
    assert entry["process"] == record.process
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])


def test_json_record_carries_the_traceback_as_one_field() -> None:
    try:
        raise ValueError("bad\nname")
    except ValueError:
        record = make_record("failed", exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback (most recent call last):\n")
    assert entry["exception"].endswith("ValueError: bad\nname")


def test_json_record_with_a_value_json_cannot_hold_is_still_one_line() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    record = make_record("odd extra", extra={"odd": cycle, "object": object()})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "odd extra"
    assert entry["odd"] == "[[...]]"
    assert entry["object"].startswith("<object object at ")


def test_quote_field() -> None:
    assert quote_field('a" 200 "b') == 'a\\" 200 \\"b'
    assert quote_field("a\\") == "a\\\\"
    assert quote_field("plain") == "plain"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_sends_every_logger_through_the_formatter(
    log_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        configure("INFO", log_format)  # type: ignore[arg-type]
        logging.getLogger("aiohttp.access").info("GET /%s", "a\nb")
        logging.getLogger("moorage.events").info("login failure actor=%s", "c\r\nd")
    finally:
        for handler in root.handlers:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    lines = stream.getvalue().split("\n")
    assert lines[-1] == ""
    assert len(lines) == 3
    if log_format == "json":
        assert [json.loads(line)["message"] for line in lines[:2]] == [
            "GET /a\nb",
            "login failure actor=c\r\nd",
        ]
    else:
        assert lines[0].endswith("aiohttp.access: GET /a\\nb")
        assert lines[1].endswith("moorage.events: login failure actor=c\\r\\nd")
