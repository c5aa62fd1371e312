"""Results pages: markdown tables rendered from their JSON files.

Each table of a results page (`docs/results/<study>.md`) is generated from a JSON file beside
the page, `docs/results/<study>/<name>.json`, and sits between two markers:

    <!-- table: <study>/<name>.json -->
    | ... the rendered table ... |
    <!-- end table -->

The path in the marker is relative to `docs/results/` wherever the page lives. Rendering
replaces whatever is between the markers by `render_table` of the file; `check` lists the pages
whose tables differ from their files (`scripts/render_results.py`, `tests/test_docs.py`).

A table file is one JSON object:

* `command`, `machine`, `date`, `provenance`: where the numbers come from (text).
* `columns`: the header cells (markdown text).
* `rows`: one list per row, one cell per column: a number, a string (markdown text, e.g.
  `"ref"` or `"+0.034 [−0.020, +0.088] (n.s.)"`) or null (an empty cell).
* `align` (optional): per column null (`---`), `"left"`, `"right"` or `"center"`.
* `format` (optional): per column null or a `str.format` template for its numbers, e.g.
  `"{:,}"` (4,096), `"{:.3f}"`, `"{:.2f}%"`, `"{:.1e}"`; a number without a template is
  written by `str()`.
* `cell_format` (optional): `[row, column, template]` for the numbers whose template differs
  from their column's.
* `bold` (optional): `[row, column]` of the cells written in bold.

Standard library only.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

RESULTS_DIR = pathlib.Path("docs") / "results"

# Each marker is a line of its own.
MARKER_RE = re.compile(
    r"^(?P<open><!-- table: (?P<name>[^\s>]+) -->)\n"
    r"(?P<body>(?:(?!^<!-- table: ).)*?)^(?P<close><!-- end table -->)$",
    re.DOTALL | re.MULTILINE)
OPEN_RE = re.compile(r"^<!-- table: ", re.MULTILINE)
CLOSE_RE = re.compile(r"^<!-- end table -->$", re.MULTILINE)

_ALIGN = {None: "---", "left": ":---", "right": "---:", "center": ":---:"}


class TableError(ValueError):
  """A table file that cannot be rendered (bad shape, unknown alignment, missing file)."""


def format_cell(value: Any, template: str | None, bold: bool = False) -> str:
  """One cell's markdown text."""
  if value is None:
    text = ""
  elif isinstance(value, str):
    text = value
  elif isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TableError(f"cell {value!r}: expected a number, a string or null")
  elif template is None:
    text = str(value)
  else:
    text = template.format(value)
  if bold and text:
    text = f"**{text}**"
  return text


def _row(cells: Sequence[str]) -> str:
  return "|" + "".join(f" {c} |" if c else " |" for c in cells)


def render_table(spec: dict[str, Any]) -> str:
  """The markdown table of a table file's object (lines joined by newlines, no final one)."""
  columns = spec.get("columns")
  rows = spec.get("rows")
  if not isinstance(columns, list) or not isinstance(rows, list):
    raise TableError("a table needs a 'columns' list and a 'rows' list")
  n = len(columns)
  align = spec.get("align") or [None] * n
  formats = spec.get("format") or [None] * n
  for key, values in (("align", align), ("format", formats)):
    if len(values) != n:
      raise TableError(f"'{key}' has {len(values)} entries for {n} columns")
  cell_format = {(r, c): t for r, c, t in spec.get("cell_format", [])}
  bold = {(r, c) for r, c in spec.get("bold", [])}
  lines = [_row(columns)]
  try:
    lines.append("|" + "".join(f"{_ALIGN[a]}|" for a in align))
  except KeyError as e:
    raise TableError(f"unknown alignment {e.args[0]!r}; use one of {sorted(map(str, _ALIGN))}")
  for r, row in enumerate(rows):
    if len(row) != n:
      raise TableError(f"row {r} has {len(row)} cells for {n} columns")
    lines.append(_row([
        format_cell(v, cell_format.get((r, c), formats[c]), (r, c) in bold)
        for c, v in enumerate(row)]))
  return "\n".join(lines)


def load_table(path: str | pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(path)
  if not path.is_file():
    raise TableError(f"{path}: no such table file")
  try:
    with path.open(encoding="utf-8") as f:
      spec = json.load(f)
  except json.JSONDecodeError as e:
    raise TableError(f"{path}: not JSON ({e})") from None
  if not isinstance(spec, dict):
    raise TableError(f"{path}: not a JSON object")
  return spec


def write_tables(output_dir: str | pathlib.Path, tables: dict[str, dict[str, Any]]) -> list:
  """Writes each table as `output_dir/<name>.json` (the files pages render); returns the paths."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, spec in tables.items():
    path = output_dir / f"{name}.json"
    with path.open("w", encoding="utf-8") as f:
      json.dump(spec, f, indent=2, ensure_ascii=False)
      f.write("\n")
    paths.append(path)
  return paths


def render_table_file(path: str | pathlib.Path) -> str:
  spec = load_table(path)
  try:
    return render_table(spec)
  except TableError as e:
    raise TableError(f"{path}: {e}") from None


def table_blocks(text: str) -> list[tuple[str, str]]:
  """(marker path, text between the markers without its final newline) of every table."""
  return [(m["name"], m["body"].removesuffix("\n")) for m in MARKER_RE.finditer(text)]


def check_markers(text: str) -> None:
  """Raises `TableError` unless every marker line pairs with one of the other kind."""
  blocks = len(MARKER_RE.findall(text))
  opens, closes = len(OPEN_RE.findall(text)), len(CLOSE_RE.findall(text))
  if not opens == closes == blocks:
    raise TableError(f"{opens} '<!-- table: ... -->' and {closes} '<!-- end table -->' lines "
                     f"make only {blocks} pairs")


def rewrite_page(text: str, results_dir: str | pathlib.Path) -> str:
  """`text` with every table between markers re-rendered from `results_dir/<marker path>`."""
  results_dir = pathlib.Path(results_dir)
  check_markers(text)

  def replace(m: re.Match[str]) -> str:
    table = render_table_file(results_dir / m["name"])
    return f"{m['open']}\n{table}\n{m['close']}"

  return MARKER_RE.sub(replace, text)


def find_pages(root: str | pathlib.Path) -> list[pathlib.Path]:
  """README.md and every markdown file under docs/, sorted."""
  root = pathlib.Path(root)
  pages = [root / "README.md"] if (root / "README.md").is_file() else []
  return pages + sorted((root / "docs").rglob("*.md"))


def render_pages(root: str | pathlib.Path, pages: Iterable[pathlib.Path] | None = None,
                 write: bool = True) -> list[pathlib.Path]:
  """Re-renders the tables of `pages` (default: `find_pages(root)`).

  Returns the pages whose text changed (with `write=False`: would change) and writes them
  when `write`.
  """
  root = pathlib.Path(root)
  results_dir = root / RESULTS_DIR
  changed = []
  for page in (find_pages(root) if pages is None else pages):
    text = page.read_text(encoding="utf-8")
    try:
      new = rewrite_page(text, results_dir)
    except TableError as e:
      raise TableError(f"{page}: {e}") from None
    if new != text:
      changed.append(page)
      if write:
        page.write_text(new, encoding="utf-8")
  return changed


def check(root: str | pathlib.Path) -> list[pathlib.Path]:
  """The pages whose tables differ from their table files (nothing is written)."""
  return render_pages(root, write=False)
