"""Every citation of docs/architecture.md in the code names one of its sections, and no
comment cites a document the repository does not hold."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for d in ("tinymaskrcnn", "tutorials", "tests", "benchmarks")
    for p in (ROOT / d).rglob("*.py")
]


def _sections():
    text = (ROOT / "docs" / "architecture.md").read_text()
    return {line[3:].strip() for line in text.splitlines() if line.startswith("## ")}


def test_every_architecture_citation_names_a_section():
    sections = _sections()
    assert "Stage map and data flow" in sections
    pattern = re.compile(r"docs/architecture\.md,\s+((?:#\s*)?[A-Z][\w ,\-\n#]*?)[).;]")
    for path in SOURCES:
        for match in pattern.finditer(path.read_text()):
            cited = re.sub(r"\s*#\s*|\s+", " ", match.group(1)).strip()
            assert any(cited.startswith(s) for s in sections), f"{path.name}: {cited!r}"


def test_no_comment_cites_the_internal_design_document():
    for path in SOURCES:
        assert "design " + "§" not in path.read_text(), path
