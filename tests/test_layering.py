"""The architecture, held by the code: the package's imports follow its layers and form no cycle,
and no function is longer than a screen.

The checkers read source with `ast` (nothing is imported) and take a root directory, so the tests
below run them on the repository and on small synthetic trees that must fail.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "roberta_jax"

# The layers, lowest first. A module may import from its own subpackage and from lower ranks only;
# two subpackages of one rank (model, data) do not import each other. The package root
# (`roberta_jax/__init__.py`, a docstring) is no layer: every module may import it, and it imports
# nothing of the package.
LAYERS = {
    "roberta_jax.suggest": 0,   # "did you mean": stdlib only
    "roberta_jax.storage": 0,   # paths local or gs://: stdlib, etils, gcsfs
    "roberta_jax.model": 1,     # the Flax modules, their config, HF weights in and out
    "roberta_jax.data": 1,      # corpus → token ids → packed rows → batches
    "roberta_jax.train": 2,     # mesh, steps, MLM objective, loop, checkpoints, metrics, command line
    "roberta_jax.finetune": 3,  # fine-tuning and its tasks
    "roberta_jax.tools": 4,     # sweeps, exploration, event files, plots, conversion
}
# Top-level names of the repository's scripts, configs and tests: the package never imports them.
ENTRY_POINTS = ("train", "finetune", "bench", "tests", "configs")
MAX_FUNCTION_LINES = 60
# Config builders are long tables of fields by design (one comment per field).
CONFIG_BUILDERS = ("default_config", "get_config")


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported name: `source` (a module of the package) imports `name` (absolute, dotted) at
    `path`:`line`; `target` is `name` where that is a module, else the module `name` comes from."""

    source: str
    name: str
    target: str
    path: str
    line: int


def package_modules(root: pathlib.Path, package: str = PACKAGE) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every .py under `root/package` (a package is its __init__.py)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute dotted names one import statement brings in: `import a.b` → a.b;
    `from a import b, c` → a.b, a.c (resolved to modules or not by the caller); relative
    imports resolved against `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = ".".join(package[: len(package) - (node.level - 1)])
        base = f"{anchor}.{base}" if base else anchor
    return [f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names]


def package_imports(root: pathlib.Path, package: str = PACKAGE) -> list[Import]:
    """Every import in the package's modules, wherever it stands.

    Every import statement counts: at module level, inside a function (a lazy import is a
    dependency all the same, only deferred) and under `if TYPE_CHECKING:` (a type is a dependency
    too). So a cycle found here is a cycle of dependencies; making one of its imports lazy does not
    make it acceptable.
    """
    modules = package_modules(root, package)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
            for name in _imported_names(node, module, path.name == "__init__.py"):
                # `from a import b`: b is a module if there is one by that name, else a name in a.
                target = name if name in modules or isinstance(node, ast.Import) else name.rpartition(".")[0]
                found.append(Import(module, name, target, str(path.relative_to(root)), node.lineno))
    return found


def _layer(module: str, layers: dict[str, int]) -> str | None:
    """The entry of `layers` that `module` belongs to (itself or its nearest enclosing package)."""
    owners = [name for name in layers if module == name or module.startswith(f"{name}.")]
    return max(owners, key=len) if owners else None


def layer_violations(root: pathlib.Path, package: str = PACKAGE, layers: dict[str, int] = LAYERS,
                     entry_points: tuple[str, ...] = ENTRY_POINTS) -> list[str]:
    """One line per import against the layers: `path:line: source imports target: why`."""
    out = []
    for imp in package_imports(root, package):
        where = f"{imp.path}:{imp.line}: {imp.source} imports {imp.name}"
        top = imp.target.split(".")[0]
        if top in entry_points:
            out.append(f"{where}: the package never imports the entry scripts, bench, configs or tests")
            continue
        if top != package or imp.target == package:
            continue  # outside the package, or its root: always allowed
        source, target = _layer(imp.source, layers), _layer(imp.target, layers)
        if imp.source == package:
            out.append(f"{where}: the package root imports nothing of the package")
        elif source is None:
            out.append(f"{where}: {imp.source} is in no layer; add its subpackage to LAYERS")
        elif target is None:
            out.append(f"{where}: {imp.target} is in no layer; add its subpackage to LAYERS")
        elif target != source and layers[target] >= layers[source]:
            out.append(f"{where}: {source} (rank {layers[source]}) may import only from itself and lower "
                       f"ranks, and {target} has rank {layers[target]}")
    return out


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of `graph` {node: successors}, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def import_cycles(root: pathlib.Path, package: str = PACKAGE) -> list[str]:
    """One entry per group of modules that import each other in a circle (a strongly connected
    component of the module graph, or a module importing itself), with the imports that close it."""
    modules = package_modules(root, package)
    edges = [imp for imp in package_imports(root, package) if imp.target in modules]
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for imp in edges:
        graph[imp.source].add(imp.target)
    out = []
    for component in sorted(_strongly_connected(graph)):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        members = set(component)
        # One line per importing statement and module imported (`from m import a, b` is one).
        lines = dict.fromkeys(f"  {imp.path}:{imp.line}: {imp.source} imports {imp.target}"
                              for imp in edges if imp.source in members and imp.target in members)
        out.append(f"cycle among {', '.join(component)}:\n" + "\n".join(lines))
    return out


def long_functions(root: pathlib.Path, package: str = PACKAGE, scripts: tuple[str, ...] = ("train.py", "finetune.py"),
                   limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path:line: name is N lines` for every function or method, nested ones included, longer than
    `limit` lines from its `def` to the last line of its body; config builders excepted."""
    paths = sorted((root / package).rglob("*.py")) + [root / s for s in scripts if (root / s).is_file()]
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name in CONFIG_BUILDERS:
                continue
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                out.append(f"{path.relative_to(root)}:{node.lineno}: {node.name} is {length} lines")
    return out


# -- the repository ----------------------------------------------------------------------------


def test_imports_follow_the_layers():
    violations = layer_violations(REPO)
    assert not violations, "imports against the layers (table LAYERS in this file):\n" + "\n".join(violations)


def test_no_import_cycles():
    cycles = import_cycles(REPO)
    assert not cycles, "modules that import each other:\n" + "\n".join(cycles)


def test_every_package_module_is_in_a_layer():
    unplaced = [m for m in package_modules(REPO) if m != PACKAGE and _layer(m, LAYERS) is None]
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"


def test_no_function_is_longer_than_a_screen():
    offenders = long_functions(REPO)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines; split them:\n" + "\n".join(offenders)


# -- the checkers on synthetic trees -----------------------------------------------------------


def make_tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """Writes `files` {relative path: source} under `root`, with an empty __init__.py in every
    package directory that lacks one."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    for directory in (root / PACKAGE).rglob("*"):
        if directory.is_dir() and not (directory / "__init__.py").exists():
            (directory / "__init__.py").write_text("")
    (root / PACKAGE / "__init__.py").touch()
    return root


CLEAN = {
    "roberta_jax/suggest.py": "import difflib\n",
    "roberta_jax/model/config.py": "from roberta_jax.suggest import did_you_mean\n",
    "roberta_jax/model/layers.py": "from . import config\nfrom .config import did_you_mean\n",
    "roberta_jax/data/packing.py": "import numpy as np\n",
    "roberta_jax/train/steps.py": "from roberta_jax.model import layers\nfrom roberta_jax.data import packing\n",
    "roberta_jax/finetune/tasks/__init__.py": "from roberta_jax.finetune.tasks import ner\n",
    "roberta_jax/finetune/tasks/ner.py": "from ...train import steps\nimport roberta_jax\n",
    "roberta_jax/tools/plots.py": "def draw():\n    from roberta_jax.finetune.tasks import ner\n",
    "train.py": "from roberta_jax.train import steps\n",
}


def test_a_clean_tree_passes(tmp_path):
    root = make_tree(tmp_path, CLEAN)
    assert layer_violations(root) == []
    assert import_cycles(root) == []
    assert long_functions(root) == []


def test_relative_imports_resolve_to_modules(tmp_path):
    root = make_tree(tmp_path, CLEAN)
    found = {(i.source, i.target) for i in package_imports(root)}
    assert ("roberta_jax.model.layers", "roberta_jax.model.config") in found  # from . import config
    assert ("roberta_jax.finetune.tasks.ner", "roberta_jax.train.steps") in found  # from ...train import steps
    assert ("roberta_jax.finetune.tasks", "roberta_jax.finetune.tasks.ner") in found


def test_imports_upward_sideways_or_of_scripts_are_each_reported(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN,
        "roberta_jax/model/layers.py": """\
            from roberta_jax.model import config

            def build():
                from roberta_jax.train.steps import make_step  # upward, inside a function
        """,
        "roberta_jax/data/packing.py": "from roberta_jax.model import config, layers\n",  # sideways, twice
        "roberta_jax/suggest.py": "import train\nfrom tests import train_runs\n",
    })
    assert layer_violations(root) == [
        "roberta_jax/data/packing.py:1: roberta_jax.data.packing imports roberta_jax.model.config: roberta_jax.data "
        "(rank 1) may import only from itself and lower ranks, and roberta_jax.model has rank 1",
        "roberta_jax/data/packing.py:1: roberta_jax.data.packing imports roberta_jax.model.layers: roberta_jax.data "
        "(rank 1) may import only from itself and lower ranks, and roberta_jax.model has rank 1",
        "roberta_jax/model/layers.py:4: roberta_jax.model.layers imports roberta_jax.train.steps.make_step: "
        "roberta_jax.model "
        "(rank 1) may import only from itself and lower ranks, and roberta_jax.train has rank 2",
        "roberta_jax/suggest.py:1: roberta_jax.suggest imports train: the package never imports the entry "
        "scripts, bench, configs or tests",
        "roberta_jax/suggest.py:2: roberta_jax.suggest imports tests.train_runs: the package never imports the "
        "entry scripts, bench, configs or tests",
    ]


def test_a_module_outside_the_layers_is_reported(tmp_path):
    root = make_tree(tmp_path, {**CLEAN, "roberta_jax/utils.py": "from roberta_jax.model import config\n",
                                "roberta_jax/__init__.py": "from roberta_jax import suggest\n"})
    assert layer_violations(root) == [
        "roberta_jax/__init__.py:1: roberta_jax imports roberta_jax.suggest: the package root imports nothing of "
        "the package",
        "roberta_jax/utils.py:1: roberta_jax.utils imports roberta_jax.model.config: roberta_jax.utils is in no "
        "layer; add its subpackage to LAYERS",
    ]


def test_a_cycle_is_reported_with_the_imports_that_close_it(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN,
        # a → b at module level, b → c inside a function, c → a: one cycle, allowed by the layers.
        "roberta_jax/data/a.py": "from roberta_jax.data import b\n",
        "roberta_jax/data/b.py": "def f():\n    from roberta_jax.data.c import g\n",
        "roberta_jax/data/c.py": "from . import a\n\ndef g():\n    pass\n",
        "roberta_jax/model/selfish.py": "from roberta_jax.model import selfish\n",
    })
    assert layer_violations(root) == []
    assert import_cycles(root) == [
        "cycle among roberta_jax.data.a, roberta_jax.data.b, roberta_jax.data.c:\n"
        "  roberta_jax/data/a.py:1: roberta_jax.data.a imports roberta_jax.data.b\n"
        "  roberta_jax/data/b.py:2: roberta_jax.data.b imports roberta_jax.data.c\n"
        "  roberta_jax/data/c.py:1: roberta_jax.data.c imports roberta_jax.data.a",
        "cycle among roberta_jax.model.selfish:\n"
        "  roberta_jax/model/selfish.py:1: roberta_jax.model.selfish imports roberta_jax.model.selfish",
    ]


def test_long_functions_are_listed_with_their_length(tmp_path):
    def function(name: str, lines: int, indent: str = "") -> str:
        body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
        return f"{indent}def {name}():\n{body}{indent}    return 0\n"

    root = make_tree(tmp_path, {
        **CLEAN,
        "roberta_jax/tools/sweep.py": function("short", 60) + "\n\nclass Runner:\n" + function("run", 61, "    "),
        "roberta_jax/train/config.py": function("get_config", 90),
        "finetune.py": "import sys\n\n\n" + function("main", 75),
    })
    assert long_functions(root) == [
        "roberta_jax/tools/sweep.py:64: run is 61 lines",
        "finetune.py:4: main is 75 lines",
    ]
