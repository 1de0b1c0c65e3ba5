"""References between the repository's files: every markdown link and every mention of a Markdown
file (``docs/theory.md#anchor``, ``README.md``) in the docs, configs, scripts, plugins and the
package names a file that exists and, with ``#anchor``, a heading of that file (GitHub's anchors);
and nothing cites the briefs the project was built from, which are not part of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["README.md", "docs", "configs", "scripts", "plugins", "mim_lightning"]
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".ini", ".json"}
TEXT_NAMES = {"Dockerfile"}
SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "build", "dist", ".pytest_cache", "lightning_logs", "runs"}

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
# A path-like mention of a Markdown file, optionally with an anchor: docs/theory.md#measures.
MD_MENTION = re.compile(r"(?<![\w/.\-])((?:\.{1,2}/)*(?:[\w\-]+/)*[\w\-.]*\w\.md)(#[\w\-]+)?(?![\w/])")
# Citations of the briefs (patterns split so that this file does not cite them itself).
BRIEFS = re.compile("|".join([r"\bSCIENCE" r"\.md\b", r"\bDESIGN" r"\.md\b", r"\.\./" r"shared\b"]))


def text_files(roots):
    """Text files under the given paths (relative to the repository root), sorted."""
    found = []
    for name in roots:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for file in candidates:
            parts = set(file.relative_to(ROOT).parts)
            if not file.is_file() or parts & SKIPPED_DIRS or any(p.endswith(".egg-info") for p in parts):
                continue
            if file.suffix in TEXT_SUFFIXES or file.name in TEXT_NAMES:
                found.append(file)
    return found


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text: markdown links and emphasis reduced to their text,
    lowercased, every character that is not a letter, digit, space, hyphen or underscore dropped,
    spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML tags
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def markdown_lines(text: str):
    """(line number, line, inside a code fence) for each line of a Markdown text."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            yield number, line, True
            continue
        yield number, line, fenced


_ANCHORS: dict[Path, set[str]] = {}


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (outside code fences), with GitHub's -1, -2, ...
    suffixes for repeated headings."""
    if path not in _ANCHORS:
        seen: dict[str, int] = {}
        result = set()
        for _, line, fenced in markdown_lines(path.read_text(encoding="utf-8")):
            match = None if fenced else HEADING.match(line)
            if not match:
                continue
            base = github_anchor(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
        _ANCHORS[path] = result
    return _ANCHORS[path]


def resolve(target: str, source: Path, bases) -> Path | None:
    """The file a reference names, tried relative to each base directory in turn."""
    for base in bases:
        candidate = (base / target).resolve()
        if candidate.exists():
            return candidate
    return None


def check_reference(source: Path, number: int, target: str, anchor: str | None, bases) -> str | None:
    """An error message for a broken reference, or None."""
    where = f"{source.relative_to(ROOT)}:{number}"
    if target:
        path = resolve(target, source, bases)
        if path is None:
            return f"{where}: {target!r} does not exist"
    else:
        path = source
    if anchor and path.suffix == ".md" and path.is_file() and anchor not in anchors(path):
        known = ", ".join(sorted(anchors(path)))
        return f"{where}: {target or path.name}#{anchor} names no heading (anchors: {known})"
    return None


def references(path: Path):
    """(line number, target, anchor, bases) of every file reference in a text file: markdown links
    (in .md files, outside code fences) resolve against the file's folder; mentions of a Markdown
    file resolve against the repository root, then the file's folder."""
    text = path.read_text(encoding="utf-8", errors="replace")
    is_markdown = path.suffix == ".md"
    lines = markdown_lines(text) if is_markdown else ((n, line, False) for n, line in enumerate(text.splitlines(), 1))
    for number, line, fenced in lines:
        linked_spans = []
        if is_markdown and not fenced:
            for match in MD_LINK.finditer(line):
                linked_spans.append(match.span())
                target = match.group(1)
                if URL.match(target) or target.startswith("mailto:"):
                    continue
                file_part, _, anchor = target.partition("#")
                yield number, file_part, anchor or None, [path.parent]
        stripped = URL.sub(lambda m: " " * len(m.group(0)), line)
        for match in MD_MENTION.finditer(stripped):
            if any(start <= match.start() < end for start, end in linked_spans):
                continue
            anchor = match.group(2)[1:] if match.group(2) else None
            yield number, match.group(1), anchor, [ROOT, path.parent]


def test_github_anchor_rules():
    assert github_anchor("The optimal spectral threshold") == "the-optimal-spectral-threshold"
    assert github_anchor("The paper's experiments") == "the-papers-experiments"
    assert github_anchor("`register(name, fn, **metadata)`") == "registername-fn-metadata"
    assert github_anchor("Which plugins load: `MIM_LIGHTNING_PLUGINS`") == "which-plugins-load-mim_lightning_plugins"
    assert github_anchor("Assumption 5: non-degeneracy") == "assumption-5-non-degeneracy"


def test_theory_document_has_its_sections():
    expected = {
        "model", "network", "algorithm", "stage-1-as-power-iteration", "assumptions",
        "the-population-matrix-m", "the-optimal-spectral-threshold", "preprocessed-losses",
        "bayes-optimal-limit", "measures", "experiments", "references",
    }
    assert expected <= anchors(ROOT / "docs" / "theory.md")


def test_references_to_repository_files_resolve():
    errors = []
    for path in text_files(SCANNED):
        for number, target, anchor, bases in references(path):
            error = check_reference(path, number, target, anchor, bases)
            if error:
                errors.append(error)
    assert not errors, "broken references:\n" + "\n".join(errors)


@pytest.mark.parametrize("root", [*SCANNED, "tests", "Dockerfile", "pyproject.toml"])
def test_nothing_cites_the_briefs(root):
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in text_files([root])
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if BRIEFS.search(line)
    ]
    assert not hits, "cites a brief that is not in the repository (cite docs/theory.md instead):\n" + "\n".join(hits)


# --------------------------------------------------------------------------- the documentation site

SITE_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MIM_LIGHTNING_PLUGINS": ""}


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300, env=SITE_ENV)


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (mkdocs.yml: broken links and anchors, and pages left out of the nav,
    are warnings) succeeds with no warning, and every Markdown page under docs/ is in the nav."""
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "WARNING" not in log, log[-4000:]
    pages = sorted(p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md"))
    for page in pages:
        built = tmp_path / "site" / ("index.html" if page.name == "index" else page / "index.html")
        assert built.is_file(), f"docs/{page}.md was not built"
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = set(re.findall(r"[\w/.-]+\.md", str(nav)))
    assert listed == {f"{page}.md" for page in pages}, "every page under docs/ is in the nav, and only those"


def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    """The check above can fail: a link to a missing page or anchor stops the strict build."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    with (docs / "cli.md").open("a") as page:
        page.write("\nSee [nothing](sweeps.md#no-such-heading).\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-heading" in done.stdout + done.stderr


def test_reference_pages_are_generated_from_the_code(tmp_path):
    """docs/reference/*.md are what scripts/make_reference.py writes now: a config key, a
    TensorBoard tag or a component added, removed or changed without regenerating them fails here."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_reference.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=SITE_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    generated = sorted(p.name for p in tmp_path.glob("*.md"))
    committed = sorted(p.name for p in (ROOT / "docs" / "reference").glob("*.md"))
    assert generated == committed == ["components.md", "config.md", "tensorboard.md"]
    stale = [name for name in generated
             if (tmp_path / name).read_text(encoding="utf-8") != (ROOT / "docs" / "reference" / name).read_text(encoding="utf-8")]
    assert not stale, f"stale reference pages {stale}: run `python scripts/make_reference.py` and commit docs/reference/"
    from mim_lightning.config import all_keys
    from mim_lightning.training.tensorboard import DESCRIPTIONS

    config_page = (tmp_path / "config.md").read_text(encoding="utf-8")
    assert all(f"| `{key}` |" in config_page for key in all_keys())
    tags_page = (tmp_path / "tensorboard.md").read_text(encoding="utf-8")
    assert len([line for line in tags_page.splitlines() if line.startswith("| `stage")
                or line.startswith("| `summary")]) >= len(DESCRIPTIONS)
    components = (tmp_path / "components.md").read_text(encoding="utf-8")
    assert "| `squared` |" in components and "**violated**: convex, C^1, not Lipschitz" in components
    assert "| `relu` |" in components and "| `logcosh` |" in components and "| `z1z2` |" in components


def test_the_readme_is_short_and_links_into_the_site():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"\]\((docs/[\w/]+\.md)", readme))
    pages = {f"docs/{p.relative_to(ROOT / 'docs').as_posix()}" for p in (ROOT / "docs").rglob("*.md")}
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"
