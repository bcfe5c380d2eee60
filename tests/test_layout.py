"""The package's shape (docs/architecture.md): its parts in one order from the bottom up, no module importing a
part above its own, no import cycle among its modules, none over 600 lines."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "c2c"

# The parts, from the bottom up: a module may import its own part and the parts below it, never one above.
PARTS = [
    "core",        # names, validation, files, statistics, model loading, K/V caches, rotary, token rows as tensors
    "data",        # benchmark rows and prompts, training data, the synthetic tasks (no torch)
    "inputs",      # rendering and token alignment, contexts, laying out sections, preparing a batch
    "runtime",     # the forward passes every method shares, and where sharer K/V come from
    "translator",  # the context translator: config, model (and reading a context), closed-form fit
    "model",       # the pair: config, fusers, its files and the Hub, C2CModel, inspection
    "training",    # recipes, objectives, distributed steps, trainer state, the train and fit runs
    "evaluation",  # free-text answers, statistics summaries, scorers, c2c eval
    "interop",     # converting the reference implementation's checkpoints
    "serve",       # the OpenAI-compatible server and the terminal chat
    "entry",       # the commands: c2c (cli), python -m c2c.lm_eval_harness, and the package's lazy names
]
ENTRY = {"c2c", "c2c.cli", "c2c.lm_eval_harness"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    return "entry" if module in ENTRY else module.split(".")[1]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions (type-checking blocks too)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {c for c in candidates if c in modules and c != name}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a part above the importer's own, as ``module (part) -> module (part)``."""
    rank = {part: i for i, part in enumerate(PARTS)}
    return [f"{a} ({part_of(a)}) -> {b} ({part_of(b)})" for a in sorted(graph) for b in sorted(graph[a])
            if rank[part_of(b)] > rank[part_of(a)]]


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_order_check_finds_an_upward_import():
    assert upward_imports({"c2c.core.cache": {"c2c.model.pair"}, "c2c.model.pair": {"c2c.core.cache"}}) == \
        ["c2c.core.cache (core) -> c2c.model.pair (model)"]
    assert upward_imports({"c2c.cli": {"c2c.serve.app"}, "c2c.data.rows": {"c2c.core.names"}}) == []


def test_every_module_is_in_a_declared_part():
    graph = import_graph()
    assert {"c2c.model.pair", "c2c.inputs.batch", "c2c.evaluation.evaluate", "c2c.training.train"} <= set(graph)
    assert "c2c.inputs.batch" in graph["c2c.model.pair"]  # the graph sees relative imports
    assert "c2c.training.train" in graph["c2c.cli"]  # and imports inside functions
    strays = sorted(m for m in graph if part_of(m) not in PARTS)
    assert not strays, f"modules outside the declared parts {PARTS}: {strays}"
    assert {part_of(m) for m in graph} == set(PARTS), "a declared part has no module"


def test_no_part_imports_one_above_it():
    upward = upward_imports(import_graph())
    assert not upward, "imports of a part above the importer's (order, bottom up: " + ", ".join(PARTS) + "):\n" + \
        "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_no_module_over_600_lines():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > 600}
