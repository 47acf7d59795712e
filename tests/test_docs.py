"""The README stays a short entry point, and the documentation site's sources are whole: every page is in the nav,
every page the nav names exists, and every figure a page shows exists (``make docs`` builds the site with
``mkdocs build --strict``, which checks every link and reference; this test needs no mkdocs)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_page_is_in_the_nav_and_exists():
    nav = re.findall(r"^\s*- (?:[^:\n]+: )?([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages


def test_every_figure_and_page_link_resolves():
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and page.parent != ROOT:  # docs/: results/ is served from the repository's root
                rel = path.relative_to(DOCS.resolve()) if path.is_relative_to(DOCS.resolve()) else None
                path = ROOT / rel if rel is not None else path
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
