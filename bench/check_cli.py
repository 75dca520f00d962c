"""``erasebench check RUN_DIR``: verify a run directory's integrity without running anything.

Every file the run wrote is read back and checked against what was written:

- ``manifest.json``, ``summary.json``, ``records/*.parquet`` and ``records.parquet`` against the SHA-256 kept in
  ``<file>.sha256`` at write time, and parsed (JSON / parquet);
- every PNG under ``images/`` decoded whole and checked against the pixel checksum it carries
  (:class:`bench.generate.ImageCache`);
- every image a record points to (``image_path``) is present;
- every saved edit under ``edits/`` has its ``edit.json``.

Files written before checksums existed have none; they are only parsed, and counted as unverified.
One line per problem on stdout (or a JSON report with ``--json``), naming the file and what the next
``erasebench run`` does about it. Exit status: 0 when every file is whole, 1 when a file is damaged
or missing, 2 when RUN_DIR is not a run directory.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from bench.store import DamagedFileError, RunStore, checksum_path, read_verified_json, read_verified_parquet

EXIT_DAMAGED = 1
EXIT_USAGE = 2

REDO = {
    "manifest": "cannot be redone (it holds the run's config): restore it, or rerun into a new --out",
    "summary": "rebuilt by the next `erasebench run` with the same config",
    "records": "redone by the next `erasebench run` with the same config",
    "consolidated": "rebuilt from records/ by the next `erasebench run` with the same config",
    "image": "generated again when the next `erasebench run` needs it",
    "edit": "recomputed: delete the folder, then `erasebench run` with the same config",
}


@dataclass
class Problem:
    path: str
    kind: str  # manifest | summary | records | consolidated | image | edit
    problem: str
    remedy: str

    def line(self) -> str:
        return f"{self.path}: {self.problem} ({self.remedy})"


@dataclass
class CheckReport:
    run: str
    checked: int = 0
    unverified: list[str] = field(default_factory=list)  # whole files without a checksum (older runs)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"run": self.run, "ok": self.ok, "checked": self.checked, "unverified": self.unverified,
                "problems": [asdict(p) for p in self.problems]}


def check_run(root: str | Path) -> CheckReport:
    """Verify every file of a run directory; reads only, writes nothing."""
    from bench.generate import read_checked_png

    store = RunStore(root)
    report = CheckReport(run=str(store.root))

    def verify(path: Path, kind: str, read) -> object | None:
        report.checked += 1
        try:
            value = read(path)
        except DamagedFileError as exc:
            report.problems.append(Problem(str(path), kind, str(exc).removeprefix(f"{path}: "), REDO[kind]))
            return None
        if not checksum_path(path).exists():
            report.unverified.append(str(path))
        return value

    if store.manifest_path.exists():
        verify(store.manifest_path, "manifest", read_verified_json)
    else:
        report.problems.append(Problem(str(store.manifest_path), "manifest", "missing", REDO["manifest"]))
    if store.summary_path.exists():
        verify(store.summary_path, "summary", read_verified_json)
    image_paths: set[str] = set()
    parts = sorted(store.records_dir.glob("*.parquet")) if store.records_dir.exists() else []
    consolidated = store.root / "records.parquet"
    for path, kind in [(p, "records") for p in parts] + ([(consolidated, "consolidated")] if consolidated.exists()
                                                         else []):
        df = verify(path, kind, read_verified_parquet)
        if isinstance(df, pd.DataFrame) and "image_path" in df.columns:
            image_paths.update(str(p) for p in df["image_path"].dropna())
    for path in sorted(store.images_dir.rglob("*.png")) if store.images_dir.exists() else []:
        report.checked += 1
        _, problem = read_checked_png(path)
        if problem is not None:
            report.problems.append(Problem(str(path), "image", f"damaged: {problem}", REDO["image"]))
    for rel in sorted(image_paths):
        if not (store.root / rel).exists():
            report.problems.append(Problem(str(store.root / rel), "image", "missing (a record points to it)",
                                           REDO["image"]))
    edits = store.root / "edits"
    for folder in sorted(p for p in edits.iterdir() if p.is_dir()) if edits.is_dir() else []:
        report.checked += 1
        if not (folder / "edit.json").is_file():
            report.problems.append(Problem(str(folder), "edit", "not a whole saved edit (no edit.json)",
                                           REDO["edit"]))
    return report


def cmd_check(args) -> int:
    root = Path(args.run)
    if not root.is_dir() or not any((root / n).exists() for n in ("manifest.json", "records", "summary.json")):
        print(f"erasebench: error: {root}: not a run directory (no manifest.json, records/ or summary.json)",
              file=sys.stderr)
        return EXIT_USAGE
    report = check_run(root)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(problem.line())
        unverified = f", {len(report.unverified)} without a checksum (written before checksums)" \
            if report.unverified else ""
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{root}: {report.checked} file(s) checked{unverified}: {verdict}")
    return 0 if report.ok else EXIT_DAMAGED


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="verify a run directory's files against their checksums (runs nothing)",
        description="Read back every file of a run directory and check it against the checksum kept when it "
                    "was written. Exit 1 when a file is damaged or missing, 2 when RUN_DIR is not a run.")
    p.add_argument("run", type=Path, help="the run directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)
