"""Mutation testing of one module against its pure unit tests.

Each mutant is the module with one small change (a flipped comparison, a negated condition,
`and` for `or`, a dropped `return`, a returned value replaced, a `not` removed, a constant
changed). A mutant is killed when the tests fail (or time out) with it in place of the module; a
mutant that survives marks behaviour no test pins down. Mutants judged equivalent (no observable
difference) are listed with a reason in the allowlist file and do not fail the run.

The module is never written to: each mutant is written to a temporary directory and imported
under the module's name before pytest starts, so the real file stays untouched even if this
script is interrupted.

Usage: scripts/mutation-test [--list] [--jobs N] [--target FILE] [--tests FILE]
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGET = ROOT / "src" / "moorage" / "domain" / "access.py"
DEFAULT_TESTS = ROOT / "tests" / "access" / "test_access_decisions.py"
DEFAULT_ALLOWLIST = ROOT / "scripts" / "mutation_equivalent.txt"
REASON_SEPARATOR = "  ## "

# Runs in the child: load the mutant under the real module's name, then run pytest.
BOOTSTRAP = """
import importlib, importlib.util, sys
name, path = sys.argv[1], sys.argv[2]
package, _, leaf = name.rpartition(".")
parent = importlib.import_module(package) if package else None
spec = importlib.util.spec_from_file_location(name, path)
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
if parent is not None:
    setattr(parent, leaf, module)
import pytest
sys.exit(pytest.main(sys.argv[3:]))
"""

FLIPPED_COMPARISONS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
}


@dataclass(frozen=True)
class Site:
    """A node of the tree in pre-order, with where it hangs and what encloses it."""

    index: int
    node: ast.AST
    parent: ast.AST | None
    field: str
    position: int | None  # index in the parent's list field, if it is one
    context: str  # qualified name of the enclosing function or class, or "<module>"


def sites(tree: ast.AST) -> Iterator[Site]:
    """Every node outside annotations and docstrings, in a deterministic pre-order."""
    counter = 0

    def walk(
        node: ast.AST, parent: ast.AST | None, field: str, position: int | None, context: str
    ) -> Iterator[Site]:
        nonlocal counter
        yield Site(counter, node, parent, field, position, context)
        counter += 1
        inner = context
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            inner = node.name if context == "<module>" else f"{context}.{node.name}"
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns"):
                continue  # postponed annotations never run
            children = value if isinstance(value, list) else [value]
            for i, child in enumerate(children):
                if not isinstance(child, ast.AST):
                    continue
                if isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant):
                    continue  # docstrings
                yield from walk(child, node, name, i if isinstance(value, list) else None, inner)

    yield from walk(tree, None, "", None, "<module>")


def replace(site: Site, new: ast.AST) -> None:
    assert site.parent is not None
    if site.position is None:
        setattr(site.parent, site.field, new)
    else:
        getattr(site.parent, site.field)[site.position] = new


def negated(expression: ast.expr) -> ast.expr:
    return ast.UnaryOp(op=ast.Not(), operand=expression)


# A mutation: a description of what changes, and how to change a fresh copy of the site.
Change = tuple[str, Callable[[Site], None]]


def changes(site: Site) -> Iterator[Change]:
    node = site.node
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            flipped = FLIPPED_COMPARISONS.get(type(op))
            if flipped is not None:

                def flip(s: Site, i: int = i, flipped: type[ast.cmpop] = flipped) -> None:
                    assert isinstance(s.node, ast.Compare)
                    s.node.ops[i] = flipped()

                yield "comparison", flip
    if isinstance(node, ast.If | ast.While | ast.IfExp):

        def negate_test(s: Site) -> None:
            assert isinstance(s.node, ast.If | ast.While | ast.IfExp)
            s.node.test = negated(s.node.test)

        yield "negated condition", negate_test
    if isinstance(node, ast.comprehension):
        for i in range(len(node.ifs)):

            def negate_filter(s: Site, i: int = i) -> None:
                assert isinstance(s.node, ast.comprehension)
                s.node.ifs[i] = negated(s.node.ifs[i])

            yield "negated filter", negate_filter
    if isinstance(node, ast.BoolOp):

        def swap(s: Site) -> None:
            assert isinstance(s.node, ast.BoolOp)
            s.node.op = ast.Or() if isinstance(s.node.op, ast.And) else ast.And()

        yield "and/or", swap
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):

        def drop_not(s: Site) -> None:
            assert isinstance(s.node, ast.UnaryOp)
            replace(s, s.node.operand)

        yield "removed not", drop_not
    if isinstance(node, ast.Return):
        yield "dropped return", lambda s: replace(s, ast.Pass())
        returned = node.value
        if returned is not None:
            for constant in (True, False, None):
                if isinstance(returned, ast.Constant) and returned.value is constant:
                    continue

                def set_value(s: Site, constant: bool | None = constant) -> None:
                    assert isinstance(s.node, ast.Return)
                    s.node.value = ast.Constant(constant)

                yield f"returns {constant}", set_value
            if isinstance(returned, ast.Compare | ast.BoolOp | ast.UnaryOp | ast.Call):

                def negate_value(s: Site) -> None:
                    assert isinstance(s.node, ast.Return)
                    assert s.node.value is not None
                    s.node.value = negated(s.node.value)

                yield "negated return", negate_value
    if isinstance(node, ast.Constant):
        literal = node.value
        replacements: list[bool | int | str] = []
        if isinstance(literal, bool):
            replacements = [not literal]
        elif isinstance(literal, int):
            replacements = [literal + 1, 0 if literal else 1]
        elif isinstance(literal, str):
            replacements = ["" if literal else "mutant"]
        for replacement in replacements:

            def set_constant(s: Site, replacement: bool | int | str = replacement) -> None:
                replace(s, ast.Constant(replacement))

            yield "constant", set_constant


@dataclass(frozen=True)
class Mutant:
    line: int
    signature: str  # stable across edits elsewhere in the file: no line numbers in it
    source: str


def mutants(source: str) -> list[Mutant]:
    reference = ast.parse(source)
    found: list[Mutant] = []
    seen: Counter[str] = Counter()
    for site in sites(reference):
        for number, (kind, _) in enumerate(changes(site)):
            tree = ast.parse(source)  # a fresh tree per mutant; the reference stays intact
            target = next(s for s in sites(tree) if s.index == site.index)
            before = _shown(target.node, target.parent)
            list(changes(target))[number][1](target)
            after = _shown(_current(target), target.parent)
            ast.fix_missing_locations(tree)
            mutated = ast.unparse(tree)
            description = f"{site.context}: {kind}: {_one_line(before)} -> {_one_line(after)}"
            seen[description] += 1
            if seen[description] > 1:
                description += f" (#{seen[description]})"
            found.append(Mutant(getattr(site.node, "lineno", 0), description, mutated))
    return found


def _current(site: Site) -> ast.AST:
    assert site.parent is not None
    value = getattr(site.parent, site.field)
    return value[site.position] if site.position is not None else value  # type: ignore[no-any-return]


def _shown(node: ast.AST, parent: ast.AST | None) -> str:
    """The source a reader recognises: a condition rather than its statement, a keyword
    argument with its name."""
    if isinstance(node, ast.If | ast.While):
        node = node.test
    elif isinstance(node, ast.comprehension):
        node = ast.BoolOp(op=ast.And(), values=node.ifs) if len(node.ifs) > 1 else node.ifs[0]
    elif isinstance(parent, ast.keyword) and parent.arg is not None:
        return f"{parent.arg}={ast.unparse(node)}"
    return ast.unparse(node)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_allowlist(path: Path) -> dict[str, str]:
    """`<signature>  ## <reason>` per line; blank lines and `#` comments are skipped."""
    entries: dict[str, str] = {}
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        signature, separator, reason = line.partition(REASON_SEPARATOR)
        if not separator or not reason.strip():
            raise SystemExit(f"{path}:{number}: an entry needs a reason after '{REASON_SEPARATOR}'")
        entries[signature.strip()] = reason.strip()
    return entries


def module_name(target: Path) -> str:
    relative = target.resolve().relative_to(ROOT / "src").with_suffix("")
    return ".".join(relative.parts)


def run_tests(module: str, mutant_path: Path, tests: Path, timeout: float) -> tuple[str, float]:
    """("killed" | "survived" | "timeout", seconds) for one mutant."""
    environment = dict(os.environ)
    environment["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # no third-party plugins to import
    environment["PYTHONDONTWRITEBYTECODE"] = "1"  # parallel runs never race on __pycache__
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), environment.get("PYTHONPATH", "")]
    )
    command = [
        sys.executable,
        "-c",
        BOOTSTRAP,
        module,
        str(mutant_path),
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        # The hang guard configured for the whole suite (`timeout`); this run has its own.
        "-p",
        "pytest_timeout",
        "--noconftest",
        str(tests),
    ]
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    return ("survived" if result.returncode == 0 else "killed"), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    parser.add_argument("--tests", type=Path, default=DEFAULT_TESTS)
    parser.add_argument("--allowlist", type=Path, default=DEFAULT_ALLOWLIST)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    args = parser.parse_args()

    source = args.target.read_text()
    module = module_name(args.target)
    found = mutants(source)
    allowlist = load_allowlist(args.allowlist)
    if args.list:
        for mutant in found:
            print(f"line {mutant.line}: {mutant.signature}")
        print(f"{len(found)} mutants")
        return 0

    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        directory = Path(scratch)
        # The unmutated module, rewritten the same way, must pass: otherwise every mutant
        # would look killed.
        baseline = directory / "baseline.py"
        baseline.write_text(ast.unparse(ast.parse(source)))
        outcome, seconds = run_tests(module, baseline, args.tests, timeout=300)
        if outcome != "survived":
            print(f"the tests fail on the unmutated module ({outcome}); fix them first")
            return 2
        timeout = max(10.0, 10 * seconds)

        def run(numbered: tuple[int, Mutant]) -> tuple[Mutant, str]:
            number, mutant = numbered
            path = directory / f"mutant_{number}.py"
            path.write_text(mutant.source)
            return mutant, run_tests(module, path, args.tests, timeout)[0]

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(run, enumerate(found)))
        elapsed = time.monotonic() - started

    killed = sum(outcome != "survived" for _, outcome in results)
    timeouts = sum(outcome == "timeout" for _, outcome in results)
    survivors = [m for m, outcome in results if outcome == "survived"]
    equivalent = [m for m in survivors if m.signature in allowlist]
    unexpected = [m for m in survivors if m.signature not in allowlist]
    signatures = {m.signature for m in found}
    for mutant in unexpected:
        print(f"SURVIVED line {mutant.line}: {mutant.signature}")
    for mutant, outcome in results:
        if outcome != "survived" and mutant.signature in allowlist:
            print(f"note: allowlisted mutant is killed now, remove it: {mutant.signature}")
    for signature in allowlist:
        if signature not in signatures:
            print(f"note: allowlist entry matches no mutant any more: {signature}")
    print(
        f"{module}: {len(found)} mutants, {killed} killed ({timeouts} by timeout),"
        f" {len(equivalent)} equivalent (allowlisted), {len(unexpected)} survived"
        f" [{elapsed:.0f}s, {args.jobs} jobs]"
    )
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
