"""docs/design.md is the design users of the repository have: every reference to it resolves."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = [p for ext in ("py", "md", "toml") for p in ROOT.rglob(f"*.{ext}")
        if ".git" not in p.parts and ".venv" not in p.parts and p.name != "test_docs.py"]


def test_no_reference_to_a_document_outside_the_repository():
    assert [str(p.relative_to(ROOT)) for p in TEXT if "DESIGN.md" in p.read_text(errors="replace")] == []


def test_design_section_references_exist():
    headings = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "design.md").read_text(), flags=re.M))
    refs = {(str(p.relative_to(ROOT)), n) for p in TEXT
            for m in re.finditer(r"docs/design\.md ((?:§\d+(?:, )?)+)", p.read_text(errors="replace"))
            for n in re.findall(r"§(\d+)", m.group(1))}
    assert refs, "no references found: the pattern is wrong"
    assert sorted(r for r in refs if r[1] not in headings) == []
