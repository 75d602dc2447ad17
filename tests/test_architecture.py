"""The package's shape: no module imports another in a cycle (top-level or deferred imports),
and the training job does not depend on the sampling CLI modules."""

import ast
import pathlib

import tests

PACKAGE = pathlib.Path(tests.__file__).resolve().parent.parent / "rar_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The rar_jax modules that the module at path imports, anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
      continue
    found |= {name for name in names if name in modules}
  return found


def import_graph() -> dict[str, set[str]]:
  """module -> the rar_jax modules it imports (package __init__ files included)."""
  paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  modules = set(paths)
  return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_in_a_cycle():
  graph = import_graph()
  assert "rar_jax.training.train" in graph and "rar_jax.model.rar" in graph
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_training_does_not_import_the_sampling_commands():
  graph = import_graph()
  for name, deps in graph.items():
    if name.startswith("rar_jax.training."):
      assert not deps & {"rar_jax.sampling.export", "rar_jax.sampling.sample"}, name


# Layers, bottom to top: a module imports only from its own layer or the ones below
# (docs/architecture.md draws this picture).
LAYERS = (
  ("rar_jax.infra", "rar_jax.sharding"),
  ("rar_jax.model",),
  ("rar_jax.tokenizers",),
  ("rar_jax.data",),
  ("rar_jax.sampling",),
  ("rar_jax.evaluation",),
  ("rar_jax.training",),
  ("rar_jax.tools",),
  ("rar_jax.commands", "rar_jax.main"),
)


def layer_of(module: str) -> int:
  """The index in LAYERS of the layer that holds `module` (the package root itself: -1)."""
  for index, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return index
  if module == "rar_jax":
    return -1
  raise AssertionError(f"{module} is in no layer of tests/test_architecture.py's LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """'a -> b' for every import of a module b in a layer above a's."""
  return sorted(
    f"{name} -> {dep}"
    for name, deps in graph.items()
    for dep in deps
    if layer_of(dep) > layer_of(name)
  )


def test_layer_check_finds_an_upward_import():
  assert upward_imports({"rar_jax.model.rar": {"rar_jax.training.train"}}) == [
    "rar_jax.model.rar -> rar_jax.training.train"
  ]
  assert upward_imports({"rar_jax.training.train": {"rar_jax.model.rar"}}) == []


def test_packages_import_only_downward():
  assert upward_imports(import_graph()) == []


def test_at_most_two_modules_at_the_package_root():
  assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "main.py", "sharding.py"]
