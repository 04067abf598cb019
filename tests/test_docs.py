"""The README and docs/: every relative link resolves, and nothing points outside the
repository but the offline data directory the quick start reads."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "experiments" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(title: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  for target in LINK.findall(page.read_text()):
    if re.match(r"^[a-z]+:", target):
      continue
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{page.name}: {target} does not exist"
    assert ROOT in dest.parents or dest == ROOT, f"{page.name}: {target} leaves the repository"
    if anchor and dest.suffix == ".md":
      titles = re.findall(r"^#+ (.+)$", dest.read_text(), re.M)
      assert anchor in {_anchor(t) for t in titles}, f"{page.name}: no heading #{anchor}"


def test_nothing_points_outside_the_repository_but_the_data_dir():
  files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "mscm_jax").rglob("*.py")]
  for f in files:
    for line in f.read_text().splitlines():
      if "../" in line and "../shared" in line:
        assert "TFDS_DATA_DIR=../shared/tfds" in line, f"{f.name}: {line.strip()}"
