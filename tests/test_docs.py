"""The README and docs/ as users read them: the README opens with the two setup commands (the
second is what CI runs), every relative link resolves (files, folders and heading anchors), and
nothing names a folder of the machine a result was made on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp)/")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # '#' in code blocks is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, flags=re.M)}


def test_readme_opens_with_the_setup_commands_and_ci_runs_the_second():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1:]
    first, second = (line.split("#")[0].strip() for line in block[:2])
    assert lines.index("```bash") < 5 and block[2] == "```"
    assert first == "bash tools/setup.sh && bash tools/demo.sh"
    assert second == "bash tools/setup.sh && .venv/bin/python -m pytest"
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == second


def test_every_relative_link_resolves():
    broken = []
    for md in DOCS:
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_docs_and_results_name_no_machine_folder():
    found = []
    for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*")]:
        if p.is_file() and p.suffix in (".md", ".json", ".yaml", ".csv", ".txt"):
            for n, line in enumerate(p.read_text().splitlines(), 1):
                if MACHINE_PATH.search(line):
                    found.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert not found, found
