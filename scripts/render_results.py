r"""Renders the tables of the results pages from their JSON files (studies/pages.py).

  python scripts/render_results.py           # rewrites every page whose tables are stale
  python scripts/render_results.py --check   # lists them and exits 1; writes nothing

Pages: README.md and docs/**/*.md. A table sits between `<!-- table: <study>/<name>.json -->`
and `<!-- end table -->`; its file is docs/results/<study>/<name>.json.
"""

import pathlib
import sys

from absl import flags

from latent_attention import cli
from latent_attention.studies import pages

_CHECK = flags.DEFINE_bool(
    "check", False, "Write nothing; list the pages whose tables differ from their JSON files "
    "and exit with status 1 if there is any.")
_ROOT = flags.DEFINE_string(
    "root", str(pathlib.Path(__file__).resolve().parent.parent),
    "Repository root (README.md, docs/).")


def main(argv):
  del argv
  root = pathlib.Path(_ROOT.value)
  changed = pages.render_pages(root, write=not _CHECK.value)
  names = [str(p.relative_to(root)) for p in changed]
  if _CHECK.value:
    if names:
      print("tables differ from their JSON files (run scripts/render_results.py):",
            *names, sep="\n  ")
      sys.exit(1)
    print("every table matches its JSON file")
  else:
    print(f"rewrote {len(names)} page(s)" + "".join(f"\n  {n}" for n in names))


if __name__ == "__main__":
  cli.run(main)
