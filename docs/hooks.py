"""MkDocs hooks for the documentation site.

* The figures under results/ (outside docs/) are served as if they were docs/results/*.png. The experiments write
  their figures there and the README shows them from there; the docs pages link to them as ``results/NAME.png``
  relative to the docs root (``../results/NAME.png`` from docs/experiments/). Registering them as documentation
  files lets ``mkdocs build --strict`` check every such link and copies each figure into the built site, with no
  second copy in git.
* The docstrings use Sphinx roles in places (``:func:`pfm.solve.solve```); in the API reference a role around a
  full ``pfm.`` name becomes a link to that object when it is documented, and any other role is dropped, leaving
  the name as code.
"""

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):<code>([^<]+)</code>")


def on_files(files, config):
    results = ROOT / "results"
    for png in sorted(results.rglob("*.png")):
        if "tmp" in png.relative_to(results).parts:  # results/tmp/ is scratch space, ignored by git
            continue
        rel = png.relative_to(ROOT).as_posix()
        if files.get_file_from_path(rel) is None:
            files.append(File.generated(config, rel, abs_src_path=str(png)))
    return files


def _role(match):
    name = match.group(1)
    code = f"<code>{name}</code>"
    if re.fullmatch(r"pfm(\.\w+)+", name):
        # autorefs resolves it after every page is rendered; "optional": no warning when it is not documented
        return f'<autoref identifier="{name}" optional>{code}</autoref>'
    return code


def on_page_content(html, page, config, files):
    return ROLE.sub(_role, html)
