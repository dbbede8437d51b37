"""The package's imports run one way, and its data tools import without torch or RecBole.

The graph is read from the source (every ``import`` statement, including those inside functions),
so a lazy import counts as an arrow too.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "recbole_mm")

# Bottom to top: a module may import modules of its own layer's group or of lower layers only.
# Groups are module-name prefixes; the longest matching prefix decides a module's layer.
LAYERS = [
    ["recbole_mm.resources", "recbole_mm.feature_files", "recbole_mm.compat"],
    ["recbole_mm.embed"],
    ["recbole_mm.data"],
    ["recbole_mm.model", "recbole_mm.evaluation"],
    ["recbole_mm.trainer"],
    ["recbole_mm.registry", "recbole_mm.quick_start", "recbole_mm.tune", "recbole_mm.cli"],
    ["recbole_mm.bench"],
]
# The package's __init__ is a facade over the entry points (it imports the registry and, on first
# use, quick_start), so it sits in their layer: ``import recbole_mm`` from bench points down.
FACADE = "recbole_mm"
FACADE_LAYER = 5


def module_name(path):
    relative = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def all_modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[module_name(path)] = path
    return found


def imported_modules(path, name, modules):
    """Plugin modules that ``path`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.add(candidate if candidate in modules else base)
    return {target for target in targets if target in modules and target != name}


def layer_of(name):
    if name == FACADE:
        return FACADE_LAYER
    best = None
    for index, group in enumerate(LAYERS):
        for prefix in group:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{name} is in no layer of {__name__}.LAYERS"
    return best[0]


def import_graph():
    modules = all_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def test_every_import_points_down_or_sideways():
    upward = [
        f"{source} (layer {layer_of(source)}) -> {target} (layer {layer_of(target)})"
        for source, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(source)
    ]
    assert upward == []


def test_import_graph_has_no_cycles():
    graph = import_graph()
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_embed_does_not_import_data_and_layers_are_packages_not_modules():
    graph = import_graph()
    assert not any(target.startswith("recbole_mm.data") for source, targets in graph.items()
                   if source.startswith("recbole_mm.embed") for target in targets)
    assert {"recbole_mm.data.convert.movielens", "recbole_mm.data.convert.amazon"} <= set(graph)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["recbole_mm.data.convert", "recbole_mm.embed", "recbole_mm.data.convert.__main__"])
def test_data_tools_import_without_torch_recbole_or_ray(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'recbole', 'ray') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_first_recbole_import_after_the_plugin_registers_its_models():
    code = (
        "import sys, recbole_mm\n"
        "assert 'recbole' not in sys.modules\n"
        "from recbole.utils import get_model\n"
        "print(get_model('MUFASA').__module__, sorted(recbole_mm.registered_models()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "recbole_mm.model.mufasa"
    assert "'SASRecMM'" in result.stdout
