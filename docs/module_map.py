"""The module map of docs/DEVELOPING.md: every module of bench/, methods/ and leaderboard/ with its line count and the
first sentence of its docstring, as a Markdown table.

    python docs/module_map.py            # print the table
    python docs/module_map.py --write    # replace the table between the markers in docs/DEVELOPING.md
    python docs/module_map.py --json F   # {module: lines} into F (to compare two commits' maps)

Reads the files as text (imports nothing), so it runs on any checkout.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "leaderboard")
DOC = ROOT / "docs" / "DEVELOPING.md"
START, END = "<!-- module map: python docs/module_map.py --write -->", "<!-- end of module map -->"


def modules(root: Path = ROOT) -> dict[str, tuple[int, str]]:
    """{path: (lines, first sentence of the docstring)} for every .py file of the packages, by path."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            doc = ast.get_docstring(ast.parse(text)) or ""
            first = " ".join(doc.split("\n\n")[0].split())
            first = first.split(". ")[0].rstrip(".")
            out[str(path.relative_to(root))] = (len(text.splitlines()), first)
    return out


def table(mods: dict[str, tuple[int, str]]) -> str:
    rows = ["| module | lines | what |", "|---|---:|---|"]
    for path, (lines, first) in mods.items():
        what = first if len(first) <= 110 else first[:107] + "..."
        rows.append(f"| `{path}` | {lines} | {what.replace('|', '/')} |")
    total = {p: sum(n for m, (n, _) in mods.items() if m.startswith(p + "/")) for p in PACKAGES}
    rows.append("")
    rows.append("Lines in all: " + ", ".join(f"{p}/ {n:,}" for p, n in total.items()) + ".")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    mods = modules()
    if argv[:1] == ["--json"]:
        Path(argv[1]).write_text(json.dumps({p: n for p, (n, _) in mods.items()}, indent=1))
        return 0
    if argv[:1] == ["--write"]:
        text = DOC.read_text()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{table(mods)}\n{END}{tail}")
        return 0
    print(table(mods))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
