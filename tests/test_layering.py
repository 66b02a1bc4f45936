"""The house's layering: every module imports only what stands below it, never in a circle.

The ranks are those of the README's "Project layout"; a module may import from
a lower rank, or from its own package (layers/, text/, decoding/) without a
circle. Imports inside functions count too.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parent.parent / "keras_s2s_attn"

RANKS = {
    "special_ids": 0, "checks": 0, "options": 0, "evaluation": 0, "plotting": 0,
    "callbacks": 0, "lazy": 0, "batching": 0, "backends": 0, "graphs": 0,
    "layers": 1, "text": 1, "synthetic": 1, "quantization": 1, "optimizers": 1,
    "models": 2, "data": 2, "runs": 2, "saved_models": 2, "distributed": 2,
    "generation": 3, "averaging": 3,
    "decoding": 4,
    "translation": 5,
    "export": 6, "serving": 6, "distillation": 6, "selection": 6,
    "training": 7,
    "cli": 8,
}
# Names the lazy package `__init__`s hand out: they import nothing at import time.
LAZY = {"keras_s2s_attn", "keras_s2s_attn.decoding"}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """The keras_s2s_attn modules a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "keras_s2s_attn":
                found |= {f"keras_s2s_attn.{alias.name}" for alias in node.names}
            elif node.module.startswith("keras_s2s_attn."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names
                      if alias.name.startswith("keras_s2s_attn.")}
    return found


def area(module):
    """`keras_s2s_attn.decoding.search` -> `decoding`."""
    return module.split(".")[1]


def import_graph():
    return {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_rank():
    assert {area(module) for module in import_graph() if module not in LAZY} <= set(RANKS)


def test_modules_import_only_what_stands_below_them():
    upward = sorted(f"{module} imports {target}"
                    for module, targets in import_graph().items() if module not in LAZY
                    for target in targets
                    if area(target) != area(module) and RANKS[area(target)] >= RANKS[area(module)])
    assert not upward


def test_no_import_circle():
    graph = import_graph()
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", " -> ".join(path + [module])
        state[module] = "open"
        for target in graph.get(module, ()):
            visit(target, path + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_layers_and_model_builder_use_no_tensorflow():
    """The layers and the builder are keras.ops only, for every Keras backend."""
    for path in [*(PACKAGE / "layers").glob("*.py"), PACKAGE / "models.py",
                 PACKAGE / "special_ids.py", PACKAGE / "checks.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in getattr(node, "names", [])}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module}
        assert "tensorflow" not in names, path.name
