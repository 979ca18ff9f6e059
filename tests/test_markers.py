"""Every test that needs the Docker Engine carries `pytest.mark.docker`, so `pytest -m "not docker"`
passes on a machine without one.

Read from the source (nothing is imported or run), three rules over every module under tests/:
1. a test whose fixtures reach `docker_engine` (directly, through other fixtures, or an autouse one)
   is marked; the same rule is enforced at run time by tests/conftest.py:pytest_runtest_setup;
2. a test that itself calls docker-py, testcontainers, agentfactory's Docker backend, the `docker` CLI
   or `ServerProcess` (in its body or through a helper of its module) is marked;
3. a fixture that does any of that requests `docker_engine`, so rule 1 (and the run-time check)
   follows it to every test that uses it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ENGINE_FIXTURE = "docker_engine"
# Importing these binds names whose calls talk to the engine.
ENGINE_MODULES = ("docker", "testcontainers", "agentfactory.backends.docker")

FuncDef = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Fixture:
    name: str
    params: list[str]
    autouse: bool
    uses_engine: bool
    where: str


@dataclass
class Module:
    path: Path  # relative to tests/
    tree: ast.Module
    engine_names: set[str] = field(default_factory=set)  # bound here to engine-talking callables
    engine_funcs: set[str] = field(default_factory=set)  # top-level functions/classes that use the engine
    fixtures: dict[str, Fixture] = field(default_factory=dict)


def _is_engine_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in ENGINE_MODULES)


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_mark(node: ast.expr, name: str) -> bool:
    """`pytest.mark.<name>`, called or not, or a list/tuple holding one."""
    if isinstance(node, ast.List | ast.Tuple):
        return any(_is_mark(e, name) for e in node.elts)
    if isinstance(node, ast.Call):
        node = node.func
    return (
        isinstance(node, ast.Attribute)
        and node.attr == name
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
    )


def _fixture_decorator(func: FuncDef) -> ast.expr | None:
    for dec in func.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
            isinstance(target, ast.Name) and target.id == "fixture"
        ):
            return dec
    return None


def _uses_engine(body: ast.AST, engine_names: set[str], engine_funcs: set[str]) -> bool:
    for node in ast.walk(body):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(_is_engine_module(m) for m in mods):
                return True
        elif isinstance(node, ast.Call):
            if _root_name(node.func) in engine_names | engine_funcs:
                return True
            first = node.args[0] if node.args else None
            if isinstance(first, ast.List | ast.Tuple) and first.elts:
                head = first.elts[0]
                if isinstance(head, ast.Constant) and head.value == "docker":
                    return True  # subprocess.run(["docker", ...]) and friends
        elif isinstance(node, ast.ClassDef):
            if any(_root_name(b) in engine_names | engine_funcs for b in node.bases):
                return True
        elif isinstance(node, ast.Name) and node.id in engine_funcs:
            return True  # a helper of this module passed along (pool.map(helper, ...))
    return False


def _top_level(tree: ast.Module) -> Iterator[FuncDef | ast.ClassDef]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node


def _params(func: FuncDef) -> list[str]:
    return [a.arg for a in func.args.posonlyargs + func.args.args + func.args.kwonlyargs]


def parse(sources: Mapping[Path, str]) -> dict[Path, Module]:
    """Modules by path, with the names that talk to the engine resolved across tests/ imports."""
    modules = {path: Module(path, ast.parse(src, filename=str(path))) for path, src in sources.items()}
    dotted = {"tests." + ".".join(p.with_suffix("").parts): m for p, m in modules.items()}

    def bind_imports(m: Module) -> None:
        for node in ast.walk(m.tree):  # imports inside functions too: a little wider than Python's scopes
            if isinstance(node, ast.Import):
                m.engine_names |= {(a.asname or a.name).split(".")[0] for a in node.names if _is_engine_module(a.name)}
            elif isinstance(node, ast.ImportFrom) and node.module:
                source = dotted.get(node.module)
                for a in node.names:
                    if _is_engine_module(node.module) or (source is not None and a.name in source.engine_funcs):
                        m.engine_names.add(a.asname or a.name)

    def find_engine_funcs(m: Module) -> bool:
        grew = False
        for node in _top_level(m.tree):
            if isinstance(node, FuncDef) and _fixture_decorator(node) is not None:
                continue  # fixtures are never called by name: their parameters' names would collide
            if node.name not in m.engine_funcs and _uses_engine(node, m.engine_names, m.engine_funcs):
                m.engine_funcs.add(node.name)
                grew = True
        return grew

    # Helpers that use the engine (tests/support/server.py's ServerProcess...) make the names that
    # import them engine names in turn: iterate until nothing new is found.
    changed = True
    while changed:
        changed = False
        for m in modules.values():
            before = len(m.engine_names)
            bind_imports(m)
            changed |= find_engine_funcs(m) or len(m.engine_names) != before

    for m in modules.values():
        for node in _top_level(m.tree):
            if isinstance(node, ast.ClassDef) or (dec := _fixture_decorator(node)) is None:
                continue
            autouse = isinstance(dec, ast.Call) and any(
                k.arg == "autouse" and isinstance(k.value, ast.Constant) and k.value.value is True for k in dec.keywords
            )
            uses = _uses_engine(node, m.engine_names, m.engine_funcs)
            m.fixtures[node.name] = Fixture(node.name, _params(node), autouse, uses, f"{m.path}:{node.lineno}")
    return modules


def _visible(modules: dict[Path, Module], path: Path) -> list[Module]:
    """The module itself, then the conftest.py files from its folder up to tests/ (pytest's lookup order)."""
    chain = [modules[path]] if path.name != "conftest.py" else []
    folder = path.parent
    while True:
        conftest = modules.get(folder / "conftest.py")
        if conftest is not None:
            chain.append(conftest)
        if folder == Path("."):
            return chain
        folder = folder.parent


def _reaches_engine(
    modules: dict[Path, Module], path: Path, names: list[str], seen: set[tuple[Path, str]] | None = None
) -> bool:
    """Whether requesting these fixtures from `path` sets up `docker_engine`."""
    seen = set() if seen is None else seen
    chain = _visible(modules, path)
    for name in names:
        if name == ENGINE_FIXTURE:
            return True
        if (path, name) in seen:
            continue
        seen.add((path, name))
        for m in chain:
            fixture = m.fixtures.get(name)
            if fixture is not None:
                if _reaches_engine(modules, m.path, fixture.params, seen):
                    return True
                break
    return False


def _tests(tree: ast.Module) -> Iterator[tuple[FuncDef, bool]]:
    """(test function, marked docker by itself, its class or its module)."""
    module_marked = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and _is_mark(n.value, "docker")
        for n in tree.body
    )

    def marked(node: FuncDef | ast.ClassDef) -> bool:
        return any(_is_mark(d, "docker") for d in node.decorator_list)

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            yield node, module_marked or marked(node)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            class_marked = (
                module_marked
                or marked(node)
                or any(
                    isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
                    and _is_mark(n.value, "docker")
                    for n in node.body
                )
            )
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"):
                    yield item, class_marked or marked(item)


def unmarked_engine_uses(sources: Mapping[Path, str]) -> list[str]:
    """One line per breach of the three rules in this module's docstring."""
    modules = parse(sources)
    problems = []
    for path, m in sorted(modules.items()):
        for fixture in m.fixtures.values():
            if (
                fixture.uses_engine
                and fixture.name != ENGINE_FIXTURE
                and not _reaches_engine(modules, path, fixture.params)
            ):
                problems.append(
                    f"{fixture.where}: {fixture.name}: a fixture that uses the engine without {ENGINE_FIXTURE}"
                )
        if not path.name.startswith("test_"):
            continue
        autouse = [f.name for c in _visible(modules, path) for f in c.fixtures.values() if f.autouse]
        for test, marked in _tests(m.tree):
            if marked:
                continue
            where = f"{path}:{test.lineno}: {test.name}: not marked docker"
            if _reaches_engine(modules, path, _params(test) + autouse):
                problems.append(f"{where}, needs the engine through its fixtures")
            elif _uses_engine(test, m.engine_names, m.engine_funcs):
                problems.append(f"{where}, calls the engine")
    return problems


def test_every_test_that_needs_the_engine_is_marked_docker() -> None:
    sources = {p.relative_to(TESTS): p.read_text() for p in TESTS.rglob("*.py")}
    problems = unmarked_engine_uses(sources)
    assert not problems, "add `pytestmark = pytest.mark.docker` (or @pytest.mark.docker):\n" + "\n".join(problems)


def test_the_check_finds_each_way_a_test_reaches_the_engine() -> None:
    support = """
import subprocess
class ServerProcess:
    def containers(self):
        return subprocess.run(["docker", "ps", "-q"], check=False)
def free_port():
    return 0
"""
    conftest = """
import pytest
@pytest.fixture(scope="session")
def docker_engine():
    pass
@pytest.fixture
def server(docker_engine):
    yield
@pytest.fixture
def lazy_server():
    from tests.support.server import ServerProcess
    return ServerProcess()
"""
    bad = """
import subprocess
import docker
import pytest
from tests.support.server import ServerProcess, free_port

@pytest.fixture
def shell_server(server):
    return server

def inspect(cid):
    return subprocess.run(["docker", "inspect", cid], check=False)

def test_via_fixture(shell_server): ...
def test_via_cli(): inspect("x")
def test_via_docker_py(): docker.from_env().ping()
def test_via_server_process(tmp_path): ServerProcess(tmp_path)
def test_pure(): assert free_port() == 0
@pytest.mark.docker
def test_marked(shell_server): ...
"""
    autouse = """
import pytest
@pytest.fixture(autouse=True)
def _each(server): ...
def test_via_autouse(): ...
"""
    marked = "import pytest\npytestmark = pytest.mark.docker\ndef test_all(server): ...\n"
    problems = unmarked_engine_uses(
        {
            Path("conftest.py"): conftest,
            Path("support/server.py"): support,
            Path("integration/test_bad.py"): bad,
            Path("integration/test_autouse.py"): autouse,
            Path("integration/test_marked.py"): marked,
        }
    )
    found = {p.split(": ")[1] for p in problems}
    assert found == {
        "lazy_server",
        "test_via_fixture",
        "test_via_cli",
        "test_via_docker_py",
        "test_via_server_process",
        "test_via_autouse",
    }, problems
