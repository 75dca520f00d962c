"""``erasebench check RUN_DIR``: verify a run directory's integrity without running anything.

Every file the run wrote is read back and checked against what was written:

- ``manifest.json``, ``summary.json``, ``records/*.parquet`` and ``records.parquet`` against the SHA-256 kept in
  ``<file>.sha256`` at write time, and parsed (JSON / parquet);
- every PNG under ``images/`` decoded whole and checked against the pixel checksum it carries
  (:class:`bench.generate.ImageCache`);
- every image a record points to (``image_path``) is present;
- every image a record points to (``image_path``) is present, inside the run, and carries its own key;
- every saved edit under ``edits/`` is whole (``SHA256SUMS``) and names the method and target of its folder;
- every file the finished run's summary lists (``inventory``) is there, and no checksum lost its file;
- nothing is read through a link out of the run directory (it is reported instead).

Files of runs written before checksums existed have none; they are only parsed, and counted as unverified. In
any other run a missing checksum is damage (:meth:`bench.store.RunStore.requires_checksums`).
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

from bench.store import (
    CHECKSUM_SUFFIX,
    DamagedFileError,
    RunStore,
    checksum_path,
    inside,
    read_keyed_png,
    safe_name,
    verify_edit,
)

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


def _method_names(manifest: object) -> dict[str, str]:
    """Row name -> method name, from a manifest's recorded config ({} when it has none)."""
    config = manifest.get("config") if isinstance(manifest, dict) else None
    specs = config.get("methods") if isinstance(config, dict) else None
    out = {}
    for spec in specs if isinstance(specs, list) else []:
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            out[str(spec.get("label") or spec["name"])] = spec["name"]
    return out


def _run_targets(manifest: object) -> dict[str, str]:
    """File name -> target, from a manifest's recorded config ({} when it has none): an edit folder holds its
    target as a file name (``kessa rull`` -> ``kessa_rull``, ``a+b`` -> ``a_b``), and the edit names the target."""
    config = manifest.get("config") if isinstance(manifest, dict) else None
    targets = config.get("targets") if isinstance(config, dict) else None
    return {safe_name(t): t for t in targets if isinstance(t, str)} if isinstance(targets, list) else {}


def check_run(root: str | Path) -> CheckReport:
    """Verify every file of a run directory; reads only, writes nothing."""
    store = RunStore(root)
    report = CheckReport(run=str(store.root))

    def problem(path: Path, kind: str, text: str) -> None:
        report.problems.append(Problem(str(path), kind, text, REDO[kind]))

    def verify(path: Path, kind: str, read) -> object | None:
        report.checked += 1
        try:
            value = read(path)
        except DamagedFileError as exc:
            problem(path, kind, str(exc).removeprefix(f"{path}: "))
            return None
        except FileNotFoundError:
            problem(path, kind, "missing")
            return None
        if not checksum_path(path).exists():
            report.unverified.append(str(path))
        return value

    manifest = None
    if store.manifest_path.exists() or store.manifest_path.is_symlink():
        manifest = verify(store.manifest_path, "manifest", store.read_json)
    else:
        problem(store.manifest_path, "manifest", "missing")
    # a run written since issue 37: its images carry their keys and its edits their SHA256SUMS
    new_run = isinstance(manifest, dict) and "store_format" in manifest
    inventory: dict = {}
    if store.summary_path.exists() or store.summary_path.is_symlink():
        summary = verify(store.summary_path, "summary", store.read_json)
        if isinstance(summary, dict) and isinstance(summary.get("inventory"), dict):
            inventory = summary["inventory"]
    # a checksum whose file is gone: the file was deleted
    for folder in (store.root, store.records_dir):
        for sums in sorted(folder.glob(f"*{CHECKSUM_SUFFIX}")) if folder.is_dir() and inside(store.root, folder) \
                else []:
            described = sums.with_name(sums.name.removesuffix(CHECKSUM_SUFFIX))
            if not described.exists() and not described.is_symlink():
                kind = {"manifest.json": "manifest", "summary.json": "summary", "records.parquet": "consolidated"}.get(
                    described.name, "records" if folder == store.records_dir else None)
                if kind is not None:
                    problem(described, kind, "missing (its checksum is there)")
    image_paths: set[str] = set()
    if store.records_dir.is_symlink() or (store.records_dir.exists() and not store.records_dir.is_dir()):
        problem(store.records_dir, "records", "refused: not a folder of the run (a link or a file)")
        parts = []
    else:
        parts = sorted(store.records_dir.glob("*.parquet")) if store.records_dir.is_dir() else []
    for name in inventory.get("records", []) if isinstance(inventory.get("records"), list) else []:
        path = store.records_dir / str(name)
        if not path.exists() and not path.is_symlink() and not checksum_path(path).exists():
            problem(path, "records", "missing (the run's summary lists it)")
    consolidated = store.root / "records.parquet"
    has_consolidated = consolidated.exists() or consolidated.is_symlink()
    if not has_consolidated and inventory.get("consolidated") and not checksum_path(consolidated).exists():
        problem(consolidated, "consolidated", "missing (the run's summary lists it)")
    for path, kind in [(p, "records") for p in parts] + ([(consolidated, "consolidated")] if has_consolidated
                                                         else []):
        df = verify(path, kind, store.read_parquet)
        if kind == "records" and isinstance(df, pd.DataFrame) and len(df):
            # a unit file holds its own unit's records (two swapped unit files both verify)
            names = [safe_name(str(v)) for c in ("method", "target") if c in df.columns for v in df[c].unique()]
            if len(names) == 2 and not path.name.startswith("__".join(names) + "__"):
                problem(path, kind, f"holds the records of another unit ({'__'.join(names)[:80]})")
        if isinstance(df, pd.DataFrame) and "image_path" in df.columns:
            image_paths.update(str(p) for p in df["image_path"].dropna())
    pngs = set()
    if store.images_dir.is_symlink() and not inside(store.root, store.images_dir):
        problem(store.images_dir, "image", "refused: a link out of the run directory")
    elif store.images_dir.is_dir():
        pngs = set(store.images_dir.rglob("*.png"))
    for rel in sorted(image_paths):
        path = store.root / rel
        if Path(rel).is_absolute() or not inside(store.root, path):
            problem(path, "image", "refused: a record points outside the run directory")
        elif not path.exists() and not path.is_symlink():
            problem(path, "image", "missing (a record points to it)")
        else:
            pngs.add(path)
    for path in sorted(pngs):
        report.checked += 1
        _, trouble = read_keyed_png(path, root=store.root, require_key=new_run)
        if trouble is not None:
            problem(path, "image", trouble if trouble.startswith("refused") else f"damaged: {trouble}")
    edits = store.root / "edits"
    names, targets = _method_names(manifest), _run_targets(manifest)
    if edits.is_symlink() and not inside(store.root, edits):
        problem(edits, "edit", "refused: a link out of the run directory")
    folders = sorted(p for p in edits.iterdir() if not p.name.startswith(".")) if edits.is_dir() else []
    for name in inventory.get("edits", []) if isinstance(inventory.get("edits"), list) else []:
        if not (edits / str(name)).exists():
            problem(edits / str(name), "edit", "missing (the run's summary lists it)")
    for folder in folders:
        report.checked += 1
        row, _, target = folder.name.partition("__")
        try:
            verify_edit(folder, store.root, method=names.get(row), target=targets.get(target, target) or None,
                        require_sums=new_run)
        except DamagedFileError as exc:
            problem(folder, "edit", str(exc))
    return report


def cmd_check(args) -> int:
    root = Path(args.run)
    if not root.is_dir() or not any((root / n).exists() for n in ("manifest.json", "records", "summary.json")):
        print(f"erasebench: error: {root}: not a run directory (no manifest.json, records/ or summary.json)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        report = check_run(root)
    except OSError as exc:  # a folder that cannot be listed, a file that vanished while read
        print(f"erasebench: error: {root}: cannot be checked ({exc})", file=sys.stderr)
        return EXIT_USAGE
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
