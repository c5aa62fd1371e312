"""The package's shape: imports run one way between layers, no module imports itself back,
no file grows past 400 lines. Reads the source with `ast`; imports nothing of the package."""

import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "latent_attention"
MAX_LINES = 400

# Layers, lowest first: a module may import its own layer or lower ones, never a higher one.
# scripts/ and the entry points sit above them all.
LAYERS = (
    ("latent_attention", "latent_attention.config", "latent_attention.config_files",
     "latent_attention.timing", "latent_attention.plots"),
    ("latent_attention.attention", "latent_attention.kernels", "latent_attention.data"),
    ("latent_attention.models",),
    ("latent_attention.training",),
    ("latent_attention.bench",),
    ("latent_attention.studies",),
    ("latent_attention.cli",),
    ("scripts", "train", "eval"),
)


def layer_of(module: str) -> int:
  """The layer of the longest prefix of `module` that LAYERS names."""
  best, rank = -1, None
  for i, prefixes in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > best:
        best, rank = len(p), i
  if rank is None:
    raise AssertionError(f"{module} belongs to no layer of tests/test_layout.py::LAYERS")
  return rank


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def sources():
  files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
  return files + [ROOT / "train.py", ROOT / "eval.py"]


def imports(path: pathlib.Path) -> set:
  """Modules of the package that `path` imports, at any depth of its code (a deferred import
  inside a function counts: it is an arrow all the same)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:  # `from pkg import mod` imports pkg.mod when that is a module.
        sub = f"{node.module}.{a.name}"
        found.add(sub if is_module(sub) else node.module)
  return {m for m in found if m == "latent_attention" or m.startswith("latent_attention.")}


def is_module(name: str) -> bool:
  path = ROOT.joinpath(*name.split("."))
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict:
  return {module_name(p): imports(p) for p in sources()}


def test_every_module_is_in_a_layer():
  for module in graph():
    layer_of(module)


def test_no_import_runs_back_up():
  upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
            for m, targets in graph().items() for t in sorted(targets)
            if layer_of(t) > layer_of(m)]
  assert not upward, "\n".join(upward)


def find_cycle(edges: dict) -> list | None:
  """One cycle of `edges` as a list of nodes, or None (iterative depth-first search)."""
  state = collections.defaultdict(int)  # 0 new, 1 on the path, 2 done.
  for start in edges:
    if state[start]:
      continue
    path, stack = [], [(start, iter(sorted(edges.get(start, ()))))]
    state[start] = 1
    path.append(start)
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        stack.pop()
        path.pop()
        state[node] = 2
      elif state[child] == 1:
        return path[path.index(child):] + [child]
      elif state[child] == 0:
        state[child] = 1
        path.append(child)
        stack.append((child, iter(sorted(edges.get(child, ())))))
  return None


def test_no_import_cycle():
  edges = {m: {t for t in targets if t != m} for m, targets in graph().items()}
  cycle = find_cycle(edges)
  assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_cycles():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module, layer", [("latent_attention.training.loop", 3),
                                           ("latent_attention.plots.results", 0),
                                           ("latent_attention", 0), ("scripts.sweep", 7)])
def test_layer_of(module, layer):
  assert layer_of(module) == layer


def test_files_stay_short():
  long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sources() + sorted(
      (ROOT / "configs").rglob("*.py")) if (n := len(p.read_text().splitlines())) > MAX_LINES]
  assert not long, "\n".join(long)
