"""The documentation: links resolve, results tables equal their JSON files, README stays short.

Fast and without JAX: reads README.md and docs/**/*.md as text.
"""

import json
import pathlib
import re
import sys

import pytest

from latent_attention.studies import pages

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / pages.RESULTS_DIR
PAGES = pages.find_pages(ROOT)
README_MAX_LINES = 300

_FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")
_INLINE_CODE_RE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
_LINK_RE = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s()<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF_RE = re.compile(r"^ {0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s|$)")
_HTML_REF_RE = re.compile(r"""<(?:img|a)\s[^>]*?(?:src|href)=["']([^"']+)["']""")
_HTML_ID_RE = re.compile(r"""<a\s[^>]*?(?:name|id)=["']([^"']+)["']""")
_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")


def prose_lines(text: str) -> list[str]:
  """The lines outside fenced and indented code blocks, inline code spans blanked."""
  out, fenced, prev_blank, indented = [], None, True, False
  for line in text.split("\n"):
    m = _FENCE_RE.match(line)
    if fenced:
      if m and m.group(1) == fenced:
        fenced = None
      out.append("")
      continue
    if m:
      fenced = m.group(1)
      out.append("")
      continue
    is_blank = not line.strip()
    indented = line.startswith("    ") and not is_blank and (prev_blank or indented)
    out.append("" if indented else _INLINE_CODE_RE.sub("``", line))
    prev_blank = is_blank
  return out


def github_slug(heading: str) -> str:
  """GitHub's anchor for a heading's markdown text (github-slugger's rules)."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
  text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
  text = re.sub(r"[^\w\- ]", "", text.strip().lower())
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  """Every anchor of a markdown file: heading slugs (duplicates numbered) and HTML ids."""
  seen: dict[str, int] = {}
  result = set()
  for line in prose_lines(path.read_text(encoding="utf-8")):
    result.update(_HTML_ID_RE.findall(line))
    m = _HEADING_RE.match(line)
    if not m:
      continue
    slug = github_slug(m.group(2))
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    result.add(slug if n == 0 else f"{slug}-{n}")
  return result


def links(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line number, target) of every link, image and reference definition outside code."""
  found = []
  for i, line in enumerate(prose_lines(path.read_text(encoding="utf-8")), 1):
    for rx in (_LINK_RE, _REF_DEF_RE, _HTML_REF_RE):
      found += [(i, target) for target in rx.findall(line)]
  return found


def broken_links(path: pathlib.Path) -> list[str]:
  problems = []
  for line, target in links(path):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    where = f"{path.relative_to(ROOT)}:{line}: {target}"
    if not dest.is_relative_to(ROOT):
      problems.append(f"{where} (outside the repository)")
    elif not dest.exists():
      problems.append(f"{where} (no such file)")
    elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
      problems.append(f"{where} (no heading #{anchor} in {dest.relative_to(ROOT)})")
  return problems


def _page_id(page: pathlib.Path) -> str:
  return str(page.relative_to(ROOT))


def test_pages_found():
  names = {_page_id(p) for p in PAGES}
  assert {"README.md", "docs/design.md", "docs/usage.md"} <= names
  assert len([n for n in names if n.startswith("docs/results/")]) >= 10


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_links_resolve(page):
  assert not broken_links(page), "\n".join(broken_links(page))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_tables_match_their_files(page):
  text = page.read_text(encoding="utf-8")
  blocks = pages.table_blocks(text)
  assert len(pages.OPEN_RE.findall(text)) == len(blocks) == len(pages.CLOSE_RE.findall(text)), (
      f"{_page_id(page)}: a table marker without its pair")
  for name, body in blocks:
    path = RESULTS / name
    assert path.is_file(), f"{_page_id(page)}: table file {name} does not exist"
    assert body == pages.render_table_file(path), (
        f"{_page_id(page)}: the table of {name} differs from its file; edit the JSON and run "
        "scripts/render_results.py")


def _table_files() -> list[pathlib.Path]:
  return sorted(RESULTS.glob("*/*.json"))


def test_every_table_file_is_used_and_documented():
  used = {name for page in PAGES
          for name, _ in pages.table_blocks(page.read_text(encoding="utf-8"))}
  files = _table_files()
  assert files
  unused = [str(f.relative_to(RESULTS)) for f in files if str(f.relative_to(RESULTS)) not in used]
  assert not unused, f"table files no page renders: {unused}"
  for f in files:
    spec = json.loads(f.read_text(encoding="utf-8"))
    for key in ("command", "machine", "date", "provenance"):
      assert isinstance(spec.get(key), str) and spec[key], f"{f.relative_to(ROOT)}: no {key}"
    assert spec["columns"] and spec["rows"], f"{f.relative_to(ROOT)}: an empty table"


def test_every_figure_is_used():
  used = set()
  for page in PAGES:
    used |= {(page.parent / t.partition("#")[0]).resolve() for _, t in links(page)}
  figures = sorted((ROOT / "docs").rglob("*.png"))
  unused = [str(f.relative_to(ROOT)) for f in figures if f.resolve() not in used]
  assert not unused, f"figures no page shows: {unused}"


def test_check_finds_nothing_stale():
  assert pages.check(ROOT) == []


def test_readme_is_short():
  n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
  assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"


# The renderer and the checks themselves.

def test_render_table_formats():
  spec = {
      "columns": ["run", "bytes", "ppl", "CI", "acc", "note"],
      "align": [None, "right", "right", None, "center", "left"],
      "format": [None, "{:,}", "{:.3f}", None, "{:.2f}%", None],
      "cell_format": [[1, 2, "{:.1e}"]],
      "bold": [[0, 4], [1, 0]],
      "rows": [["mha", 4096, 5.1, "ref", 99.9, None],
               ["mla", 768, 0.00012, "+0.034 [−0.020, +0.088] (n.s.)", 88, "x"]],
  }
  assert pages.render_table(spec) == "\n".join([
      "| run | bytes | ppl | CI | acc | note |",
      "|---|---:|---:|---|:---:|:---|",
      "| mha | 4,096 | 5.100 | ref | **99.90%** | |",
      "| **mla** | 768 | 1.2e-04 | +0.034 [−0.020, +0.088] (n.s.) | 88.00% | x |",
  ])


@pytest.mark.parametrize("bad", [
    {"columns": ["a", "b"], "rows": [[1]]},
    {"columns": ["a"], "rows": [[1]], "format": ["{}", "{}"]},
    {"columns": ["a"], "rows": [[1]], "align": ["middle"]},
    {"columns": ["a"], "rows": [[[1, 2]]]},
])
def test_render_table_refuses_bad_files(bad):
  with pytest.raises(pages.TableError):
    pages.render_table(bad)


def test_rewrite_page_replaces_stale_tables(tmp_path):
  (tmp_path / "s").mkdir()
  (tmp_path / "s" / "t.json").write_text(json.dumps({"columns": ["x"], "rows": [[2]]}))
  page = "intro\n<!-- table: s/t.json -->\n| x |\n|---|\n| 1 |\n<!-- end table -->\nafter\n"
  new = pages.rewrite_page(page, tmp_path)
  assert new == "intro\n<!-- table: s/t.json -->\n| x |\n|---|\n| 2 |\n<!-- end table -->\nafter\n"
  assert pages.rewrite_page(new, tmp_path) == new


def test_github_slug():
  assert github_slug("Several devices, processes and hosts") == "several-devices-processes-and-hosts"
  assert github_slug("Perceiver accuracy vs number of latents (`configs/sweeps/x_y.py`)") == (
      "perceiver-accuracy-vs-number-of-latents-configssweepsx_ypy")
  assert github_slug("MQAR recall under Zoology's **recipe**") == "mqar-recall-under-zoologys-recipe"


def test_link_checks_catch_breakage(tmp_path, monkeypatch):
  monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
  (tmp_path / "fig.png").write_bytes(b"")
  (tmp_path / "other.md").write_text("# A title\n")
  page = tmp_path / "page.md"
  page.write_text(
      "# Top\n[ok](other.md#a-title) ![ok](fig.png) [ok](#top) [ok](https://x.org/none)\n"
      "`[code](missing.md)`\n```\n[code](missing.md)\n```\n"
      "[bad](missing.md) ![bad](gone.png) [bad](other.md#nope) [bad](#nope) [bad](../out.md)\n")
  problems = broken_links(page)
  assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
      "missing.md", "gone.png", "other.md#nope", "#nope", "../out.md"]
