"""Damage to a run directory, for the property tests and ``benchmarks/fuzz_rundir.py`` (issue 37).

Every file kind of a finished run (:data:`KINDS`) x every damage (:data:`DAMAGES`): truncate, flip a byte (or a
digit, so that JSON still parses), delete, replace by a folder, replace by a link out of the run to a foreign
file of the same kind, swap with another file of the same kind (or a foreign one). Foreign edits are the run's
own edit relabelled as another method's, with other weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DAMAGES = ("truncate", "flip", "delete", "folder", "symlink", "swap")
# file kind -> (path in the run, the swap partner of the same kind or None)
KINDS = {
    "manifest": ("manifest.json", None),
    "manifest.sha256": ("manifest.json.sha256", None),
    "summary": ("summary.json", None),
    "summary.sha256": ("summary.json.sha256", None),
    "unit": ("records/uce__circle__target.parquet", "records/none__circle__target.parquet"),
    "unit.sha256": ("records/uce__circle__target.parquet.sha256", "records/none__circle__target.parquet.sha256"),
    "consolidated": ("records.parquet", None),
    "consolidated.sha256": ("records.parquet.sha256", None),
    "image": (None, None),  # the first image of uce's target task and of none's (filled in at runtime)
    "edit-weights": ("edits/uce__circle/unet/diffusion_pytorch_model.safetensors", None),
    "edit.json": ("edits/uce__circle/edit.json", None),
    "records/": ("records", None),
    "edits/": ("edits", None),
}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    if not data:
        path.write_bytes(b"x")
        return
    if path.suffix not in (".json", ".sha256") or path.name == "edit.json":
        data[len(data) // 2] ^= 0x01
    else:
        # a flipped bit that still parses: change a digit (what an edit by hand does)
        text = data.decode(errors="replace")
        for a, b in (("0.", "9."), ("1", "2"), ("a", "b")):
            if a in text:
                k = text.rfind(a)
                text = text[:k] + b + text[k + len(a):]
                break
        data = bytearray(text.encode())
    path.write_bytes(bytes(data))


def _foreign_edit(src: Path, dst: Path) -> None:
    """A copy of an edit folder that is another method's edit: edit.json names esd-u, the weights differ."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    meta = json.loads((dst / "edit.json").read_text())
    for e in meta.get("edits", []):
        e["method"] = "esd-u"
    meta["method"] = {"name": "esd-u"}
    (dst / "edit.json").write_text(json.dumps(meta))
    w = dst / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(w)
    save_file({k: (v * 1.5 if v.is_floating_point() else v) for k, v in tensors.items()}, w)


def damage(run: Path, outside: Path, kind: str, how: str, images: tuple[str, str] = ("", "")) -> None:
    """Damage the copy ``run`` in place: file ``kind`` (``images``: the run-relative paths of two images of
    different content, for kind ``image``), damage ``how``; foreign files are put in ``outside``."""
    rel, partner = KINDS[kind]
    if kind == "image":
        rel, partner = images
    path = run / rel
    partner_path = run / partner if partner else None
    if how == "truncate":
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file())[:1]:
                f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
        else:
            path.write_bytes(path.read_bytes()[: max(0, len(path.read_bytes()) // 2)])
    elif how == "flip":
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*.parquet") if p.is_file())[:1] or \
                    sorted(p for p in path.rglob("*.safetensors"))[:1]:
                _flip(f)
        else:
            _flip(path)
    elif how == "delete":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif how == "folder":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.mkdir()
        (path / "x").write_text("x")
    elif how == "symlink":
        # a link out of the run to a foreign file of the same kind (another run's, another method's)
        target = outside / f"foreign-{path.name}"
        if kind in ("edits/",):
            target.mkdir()
            _foreign_edit(path / "uce__circle", target / "uce__circle")
        elif kind == "edit-weights" or kind == "edit.json":
            _foreign_edit(path.parents[1] if kind == "edit-weights" else path.parent, outside / "fe")
            target = outside / "fe" / path.relative_to(path.parents[1] if kind == "edit-weights" else path.parent)
        elif path.is_dir():
            shutil.copytree(path, target)
        elif partner_path is not None:
            shutil.copyfile(partner_path, target)
        else:
            shutil.copyfile(path, target)
            _flip(target)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.symlink_to(target.resolve())
    elif how == "swap":
        if partner_path is None:  # a foreign file of the same kind replaces it
            if kind in ("edits/", "edit-weights", "edit.json"):
                _foreign_edit(run / "edits" / "uce__circle", outside / "fe")
                src = outside / "fe" if kind == "edits/" else \
                    outside / "fe" / path.relative_to(run / "edits" / "uce__circle")
                if kind == "edits/":
                    shutil.rmtree(path / "uce__circle")
                    shutil.copytree(src, path / "uce__circle")
                else:
                    shutil.copyfile(src, path)
            elif path.is_dir():
                # records/: the unit files of none and uce swapped
                a, b = path / "uce__circle__target.parquet", path / "none__circle__target.parquet"
                for x, y in ((a, b), (Path(str(a) + ".sha256"), Path(str(b) + ".sha256"))):
                    tmp = x.with_name("swap.tmp")
                    x.rename(tmp), y.rename(x), tmp.rename(y)
            else:
                data = path.read_bytes()
                _flip(path)
                if path.read_bytes() == data:
                    path.write_bytes(data + b" ")
        else:
            tmp = path.with_name("swap.tmp")
            path.rename(tmp), partner_path.rename(path), tmp.rename(partner_path)
    else:
        raise ValueError(how)


