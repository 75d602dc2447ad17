"""Every repository path and rar_jax module that the docs name exists.

Scanned: README.md, docs/**/*.md, the module docstrings and comments of the Python files under
rar_jax/, configs/, launch/ and tests/, and the comments of launch/*.sh and the Dockerfile.
A reference is
  - a path under one of ROOTS (`rar_jax/model/rar.py`, `docs/guides/tpu.md#anchor`,
    `tests/testdata/*.npz`: globs must match something), not inside a longer path or a URL
    (`gs://b/docs/x`, `https://.../configs/y` and `workdirs/...` are not checked);
  - a relative Markdown link target (`[text](../measurements/performance.md)`), resolved from
    the document's folder;
  - a dotted module name (`rar_jax.infra.torch_io`, `python -m rar_jax.commands.sample`), whose
    last part may be a name the module (or package `__init__`) defines at top level.
"""

import ast
import functools
import io
import pathlib
import re
import tokenize

import pytest

import tests

ROOT = tests.ROOT
ROOTS = ("rar_jax", "tests", "configs", "launch", "docs")
# A path starts at one of ROOTS, not after a word character, '/', '.', '-' or ':' (so neither
# inside a longer path nor a URL), and ends on a word character or '*'.
PATH = re.compile(rf"(?<![\w/.:-])((?:{'|'.join(ROOTS)})/[\w./*-]*[\w*])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE = re.compile(r"(?<![\w/.-])(rar_jax(?:\.\w+)+)")


def _python_prose(source: str, name: str) -> str:
  """A Python file's module docstring and comments (not its code: strings there are data)."""
  comments = [
    token.string
    for token in tokenize.generate_tokens(io.StringIO(source).readline)
    if token.type == tokenize.COMMENT
  ]
  return "\n".join([ast.get_docstring(ast.parse(source, name)) or "", *comments])


def _shell_comments(source: str) -> str:
  return "\n".join(line for line in source.splitlines() if line.lstrip().startswith("#"))


def documents() -> dict[str, str]:
  """Repository-relative name -> text: the Markdown docs, the Python files' docstrings and
  comments, the shell scripts' and the Dockerfile's comments."""
  docs = {"README.md": (ROOT / "README.md").read_text()}
  for path in sorted((ROOT / "docs").rglob("*.md")):
    docs[str(path.relative_to(ROOT))] = path.read_text()
  for folder in ("rar_jax", "configs", "launch", "tests"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      if path != pathlib.Path(__file__).resolve():  # its own examples name stale paths
        docs[str(path.relative_to(ROOT))] = _python_prose(path.read_text(), str(path))
  for path in [*sorted((ROOT / "launch").glob("*.sh")), ROOT / "Dockerfile"]:
    docs[str(path.relative_to(ROOT))] = _shell_comments(path.read_text())
  return docs


def _exists(path: pathlib.Path) -> bool:
  text = str(path)
  if "*" in text:
    return any(ROOT.glob(str(path.relative_to(ROOT))))
  return path.exists()


@functools.cache
def _top_level_names(path: pathlib.Path) -> frozenset[str]:
  """Names a module defines at top level: functions, classes, assignments, imports."""
  names = set()
  for node in ast.parse(path.read_text(), str(path)).body:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
      names.add(node.name)
    elif isinstance(node, ast.Assign | ast.AnnAssign):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    elif isinstance(node, ast.Import | ast.ImportFrom):
      names |= {(a.asname or a.name).split(".")[0] for a in node.names}
  return frozenset(names)


def module_exists(dotted: str) -> bool:
  """`a.b.c` is a module or package under ROOT, or `a.b` is one that defines `c`."""
  path = ROOT.joinpath(*dotted.split("."))
  if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
    return True
  parent, name = path.parent, path.name
  for source in (parent.with_suffix(".py"), parent / "__init__.py"):
    if source.is_file() and name in _top_level_names(source):
      return True
  return False


def references(name: str, text: str) -> list[tuple[str, bool]]:
  """(reference, whether it exists) for every path, link and module the text names."""
  found = []
  for match in PATH.finditer(text):
    ref = match.group(1).split("#")[0].rstrip(".")
    found.append((ref, _exists(ROOT / ref)))
  if name.endswith(".md"):
    for match in LINK.finditer(text):
      target = match.group(1).split("#")[0]
      if not target or re.match(r"^[a-z]+:", target) or target.startswith("/"):
        continue  # an anchor in the same page, a URL or an absolute path
      found.append((target, _exists((ROOT / name).parent / target)))
  for match in MODULE.finditer(text):
    found.append((match.group(1), module_exists(match.group(1))))
  return found


def stale_references() -> list[str]:
  """'document: reference' for every reference that names nothing in the repository."""
  return [
    f"{name}: {ref}"
    for name, text in documents().items()
    for ref, exists in references(name, text)
    if not exists
  ]


def test_the_checker_finds_stale_and_accepts_real_references():
  text = (
    "see rar_jax/model/rar.py, docs/guides/tpu.md#profiles, tests/testdata/*.npz, "
    "`python -m rar_jax.commands.sample`, rar_jax.infra.torch_io.load_state_dict, "
    "[perf](../measurements/performance.md); not checked: gs://b/docs/x.md, "
    "https://github.com/o/r/blob/main/configs/y.py, workdirs/digits/launch.log; stale: "
    "rar_jax/attention.py, rar_jax.model.no_such_module, [x](missing.md)"
  )
  refs = references("docs/guides/example.md", text)
  assert [ref for ref, exists in refs if not exists] == [
    "rar_jax/attention.py",
    "missing.md",
    "rar_jax.model.no_such_module",
  ]
  assert len(refs) == 9, refs


@pytest.mark.parametrize(
  "name", ["README.md", "docs/architecture.md", "rar_jax/model/convert.py", "launch/local.sh"]
)
def test_the_main_documents_are_scanned(name):
  assert name in documents()


def test_every_path_the_docs_name_exists():
  stale = stale_references()
  assert not stale, "stale references in the docs:\n" + "\n".join(stale)
