"""Request-rate scenarios run by external load generators: wrk (GET) and ab (HEAD).

wrk hangs on HEAD replies that carry a Content-Length, so blob HEADs go through `ab -i -k`.
Both tools print a summary that is parsed here; any request that did not succeed is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from dataclasses import dataclass, field


class ToolError(RuntimeError):
    """The load generator is missing, failed, or printed something unexpected."""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rate: float
    failures: int  # non-2xx (and for wrk non-3xx) responses plus socket errors / failed requests
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    notes: list[str] = field(default_factory=list)


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ToolError(f"cannot read duration {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolError(f"{tool} is not installed")
    return path


async def _run(command: list[str], timeout: float) -> str:
    """Run a load generator; it is killed if the benchmark is interrupted or it overruns."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise ToolError(
            f"{command[0]} failed ({process.returncode}):"
            f" {stderr.decode(errors='replace') or stdout.decode(errors='replace')}"
        )
    return stdout.decode(errors="replace")


async def run_wrk(
    url: str, *, threads: int, connections: int, seconds: float, headers: dict[str, str]
) -> LoadResult:
    command = [
        _need("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    command.append(url)
    return parse_wrk(await _run(command, seconds + 60))


def parse_wrk(output: str) -> LoadResult:
    total = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m)", output)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if total is None or rate is None:
        raise ToolError(f"unexpected wrk output:\n{output}")
    failures = 0
    notes: list[str] = []
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        failures += int(non_2xx.group(1))
        notes.append(f"{non_2xx.group(1)} non-2xx/3xx responses")
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors = sum(int(x) for x in sockets.groups())
        failures += errors
        notes.append(f"socket errors: {sockets.group(0).split(': ', 1)[1]}")
    latencies = dict(re.findall(r"^\s+(50|99)%\s+([0-9.]+(?:us|ms|s|m))\s*$", output, re.M))
    return LoadResult(
        requests=int(total.group(1)),
        seconds=_duration_ms(total.group(2) + total.group(3)) / 1000,
        rate=float(rate.group(1)),
        failures=failures,
        latency_p50_ms=_duration_ms(latencies["50"]) if "50" in latencies else None,
        latency_p99_ms=_duration_ms(latencies["99"]) if "99" in latencies else None,
        notes=notes,
    )


async def run_ab_head(
    url: str, *, connections: int, requests: int, headers: dict[str, str] | None = None
) -> LoadResult:
    extra: list[str] = []
    for key, value in (headers or {}).items():
        extra += ["-H", f"{key}: {value}"]
    command = [
        _need("ab"),
        "-i",  # HEAD
        "-k",  # keep-alive
        "-q",
        "-s",
        "30",
        "-c",
        str(connections),
        "-n",
        str(requests),
        *extra,
        url,
    ]
    return parse_ab(await _run(command, 600))


def parse_ab(output: str) -> LoadResult:
    complete = re.search(r"Complete requests:\s+(\d+)", output)
    seconds = re.search(r"Time taken for tests:\s+([0-9.]+) seconds", output)
    rate = re.search(r"Requests per second:\s+([0-9.]+)", output)
    if complete is None or seconds is None or rate is None:
        raise ToolError(f"unexpected ab output:\n{output}")
    failures = 0
    notes: list[str] = []
    failed = re.search(r"Failed requests:\s+(\d+)", output)
    if failed and int(failed.group(1)):
        failures += int(failed.group(1))
        notes.append(f"{failed.group(1)} failed requests")
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
    if non_2xx and int(non_2xx.group(1)):
        failures += int(non_2xx.group(1))
        notes.append(f"{non_2xx.group(1)} non-2xx responses")
    keep_alive = re.search(r"Keep-Alive requests:\s+(\d+)", output)
    if keep_alive and int(keep_alive.group(1)) < int(complete.group(1)):
        notes.append(f"only {keep_alive.group(1)} requests reused a connection")
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\d+)", output, re.M))
    return LoadResult(
        requests=int(complete.group(1)),
        seconds=float(seconds.group(1)),
        rate=float(rate.group(1)),
        failures=failures,
        latency_p50_ms=float(percentiles["50"]) if "50" in percentiles else None,
        latency_p99_ms=float(percentiles["99"]) if "99" in percentiles else None,
        notes=notes,
    )
