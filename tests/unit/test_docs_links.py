"""Every relative link and #anchor in README.md (and the other top-level *.md) and docs/*.md resolves,
as GitHub renders them.

A link resolves when its file (or folder) exists in the checkout and is not git-ignored (a file that
exists only on your machine is a broken link on GitHub), and its anchor, when it points into a Markdown
file, is one of that file's heading slugs or an explicit ``<a id="...">``. Slugs follow GitHub: the
heading's text (inline code kept, link targets, emphasis marks and HTML tags dropped), lowercased,
punctuation other than ``-`` and ``_`` removed, each space turned into ``-``; a repeated heading gets
``-1``, ``-2``, ... Headings and links inside fenced code blocks and inline code do not count.
Links with a scheme (``https:``, ``mailto:``) are not followed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](dest) and ![alt](dest), dest optionally in <...>, optionally followed by a "title"
INLINE_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE_DEF = re.compile(r"^ {0,3}\[(?!\^)([^\]]+)\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
NOT_SLUG = re.compile(r"[^\w\- ]", re.UNICODE)  # GitHub keeps letters, digits, '_', '-' and spaces


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    text: str
    target: str

    def where(self, root: Path) -> str:
        return f"{self.source.relative_to(root)}:{self.line}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading with this (Markdown) text."""
    parts: list[str] = []
    for i, piece in enumerate(INLINE_CODE.split(heading)):
        kind = i % 3  # split() with two groups: text, the backticks, the code
        if kind == 2:
            parts.append(piece.strip())  # code keeps its text, '<' and all
        elif kind == 0:
            piece = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", piece)  # a link keeps its text
            piece = re.sub(r"<[^>]+>", "", piece)  # HTML tags
            parts.append(re.sub(r"(\*+)(.+?)\1", r"\2", piece))  # emphasis marks
    return NOT_SLUG.sub("", "".join(parts).strip().lower()).replace(" ", "-")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            out.append((n, line))
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(" `~"):
            fence = None
    return out


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file offers: heading slugs (repeats numbered) and <a id/name>."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text):
        found.update(HTML_ANCHOR.findall(line))
        m = ATX.match(line)
        if m is None:
            continue
        base = slug(m.group(2) or "")
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path, text: str) -> list[Link]:
    out: list[Link] = []
    for n, line in prose_lines(text):
        ref = REFERENCE_DEF.match(line)
        if ref is not None:
            out.append(Link(path, n, ref.group(1), ref.group(2).strip("<>")))
            continue
        visible = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)  # `[a](b)` in code is not a link
        out.extend(Link(path, n, m.group(1), m.group(2).strip("<>")) for m in INLINE_LINK.finditer(visible))
    return out


def ignored(paths: list[Path], root: Path) -> set[Path]:
    """Those of ``paths`` git ignores and does not track (they exist here but not on GitHub)."""
    git = shutil.which("git")
    assert git is not None, "git is needed to tell the files GitHub will not have"
    if not paths:
        return set()
    run = subprocess.run(
        [git, "-C", str(root), "check-ignore", "--stdin"],
        input="\n".join(str(p) for p in paths), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode in (0, 1), run.stderr  # 1: none ignored; 128: not a repository, a bug here
    return {Path(line) for line in run.stdout.splitlines() if line}


def broken_links(files: list[Path], root: Path = REPO, git: bool = True) -> tuple[list[str], int]:
    """(one message per broken link, how many relative links were checked); ``git``: also refuse
    targets that git ignores (``root`` must then be a git work tree)."""
    root = root.resolve()
    texts = {f.resolve(): f.read_text(encoding="utf-8") for f in files}
    anchor_cache: dict[Path, set[str]] = {}
    problems: list[str] = []
    targets: list[tuple[Link, Path]] = []
    for f, text in texts.items():
        for link in links(f, text):
            if SCHEME.match(link.target):
                continue  # https:, mailto:, ...: not ours to check offline
            raw_path, _, fragment = link.target.partition("#")
            path = unquote(raw_path)
            if not path:
                target = f
            elif path.startswith("/"):
                target = (root / path.lstrip("/")).resolve()
            else:
                target = (f.parent / path).resolve()
            shown = f"{link.where(root)}: [{link.text}]({link.target})"
            if not target.is_relative_to(root):
                problems.append(f"{shown}: points outside the repository")
                continue
            if not target.exists():
                problems.append(f"{shown}: {target.relative_to(root)} does not exist")
                continue
            targets.append((link, target))
            if fragment and target.suffix.lower() == ".md" and target.is_file():
                if target not in anchor_cache:
                    body = texts.get(target) or target.read_text(encoding="utf-8")
                    anchor_cache[target] = anchors(body)
                if unquote(fragment) not in anchor_cache[target]:
                    near = sorted(a for a in anchor_cache[target] if a[:4] == fragment[:4])[:3]
                    hint = f" (similar: {', '.join(near)})" if near else ""
                    problems.append(f"{shown}: no heading or <a id> #{fragment} in {target.name}{hint}")
    hidden = ignored(sorted({t for _, t in targets}), root) if git else set()
    for link, target in targets:
        if target in hidden:
            problems.append(f"{link.where(root)}: [{link.text}]({link.target}): git ignores {target.name}")
    return problems, len(targets)


def doc_files() -> list[Path]:
    """README.md and the other top-level Markdown files (CHANGELOG.md), then docs/*.md."""
    return [*sorted(REPO.glob("*.md")), *sorted((REPO / "docs").glob("*.md"))]


# --------------------------------------------------------------------------- the repository's docs


def test_every_relative_link_and_anchor_in_the_docs_resolves() -> None:
    files = doc_files()
    assert (REPO / "README.md").is_file() and len(files) >= 5, files
    problems, checked = broken_links(files)
    assert not problems, "broken links:\n" + "\n".join(problems)
    assert checked >= 20  # README's links to docs/, the contents line of operations.md, configuration's keys


def test_the_operations_contents_line_points_at_written_sections() -> None:
    """The first line of docs/operations.md was once a list of links to sections never written."""
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    first = next(line for _, line in prose_lines(text) if line.startswith("Running the gateway"))
    own = [link.target for link in links(REPO / "docs" / "operations.md", first)]
    assert len(own) >= 8 and all(t.startswith("#") for t in own), own
    assert {t[1:] for t in own} <= anchors(text)


# --------------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("A working setup in one command (`make demo`)", "a-working-setup-in-one-command-make-demo"),
        ("Running it as a service (systemd user units)", "running-it-as-a-service-systemd-user-units"),
        ("`providers.<name>.models[]`: one model", "providersnamemodels-one-model"),
        ("Native engine vs LiteLLM vs direct (`aib bench`)", "native-engine-vs-litellm-vs-direct-aib-bench"),
        ("What each layer costs (CPU per request, taken from the matrix)", "what-each-layer-costs-cpu-per-request-taken-from-the-matrix"),
        ("snake_case and kebab-case stay", "snake_case-and-kebab-case-stay"),
        ("A **bold** [link](x.md) <br> word", "a-bold-link--word"),
        ("Exit codes — all of them", "exit-codes--all-of-them"),
        ("Ünïcode Wörds", "ünïcode-wörds"),
    ],
)  # fmt: skip
def test_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_anchors_number_repeats_and_ignore_code_blocks() -> None:
    text = (
        "# Title\n## Setup\ntext\n## Setup\n```bash\n# not a heading\n```\n"
        "~~~~\n## also not\n```\n## still not\n~~~~\n"
        '<a id="custom-anchor"></a>\n### Closing hashes ###\n'
    )
    assert anchors(text) == {"title", "setup", "setup-1", "custom-anchor", "closing-hashes"}


def test_links_skip_code_and_read_reference_definitions(tmp_path: Path) -> None:
    text = (
        'See [a](a.md#x) and ![img](pic.png "title") and [b](<with space.md>).\n'
        "Not `[c](c.md)` nor:\n```\n[d](d.md)\n```\n[ref]: docs/e.md#y\n"
    )
    found = [(link.line, link.text, link.target) for link in links(tmp_path / "f.md", text)]
    assert found == [
        (1, "a", "a.md#x"), (1, "img", "pic.png"), (1, "b", "with space.md"), (6, "ref", "docs/e.md#y"),
    ]  # fmt: skip


def test_broken_links_are_all_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n## Real section\n", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Top\n"
        "[ok](docs/other.md#real-section) [ok too](#top) [dir](docs/) [root](/img.png) [web](https://x.invalid/#y)\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/other.md#real-sectoin)\n"
        "[bad local](#nowhere)\n"
        "[escape](../../etc/passwd)\n",
        encoding="utf-8",
    )
    problems, checked = broken_links([readme], root=tmp_path, git=False)
    assert checked == 6
    assert problems == [
        "README.md:3: [gone](docs/missing.md): docs/missing.md does not exist",
        "README.md:4: [bad anchor](docs/other.md#real-sectoin): no heading or <a id> #real-sectoin in other.md"
        " (similar: real-section)",
        "README.md:5: [bad local](#nowhere): no heading or <a id> #nowhere in README.md",
        "README.md:6: [escape](../../etc/passwd): points outside the repository",
    ]


def test_a_git_ignored_target_is_broken(tmp_path: Path) -> None:
    git = shutil.which("git")
    assert git is not None, "git is needed to tell the files GitHub will not have"
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True, timeout=60)
    (tmp_path / ".gitignore").write_text("var/\n", encoding="utf-8")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "requests.db").write_bytes(b"")
    (tmp_path / "kept.md").write_text("# Kept\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("[db](var/requests.db) [kept](kept.md#kept)\n", encoding="utf-8")
    problems, checked = broken_links([readme], root=tmp_path)
    assert checked == 2
    assert problems == ["README.md:1: [db](var/requests.db): git ignores requests.db"]
