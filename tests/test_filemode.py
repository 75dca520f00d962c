"""What erasebench writes is readable by others as the umask allows (safetensors alone writes 0600)."""

from __future__ import annotations

import os
import stat

import torch

from bench.filemode import current_umask, make_readable, save_safetensors


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_safetensors_files_follow_the_umask_not_0600(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "raw.safetensors"))
    assert _mode(tmp_path / "raw.safetensors") == 0o600  # the library's own mode: the precondition of this fix
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        save_safetensors({"a": torch.zeros(2)}, tmp_path / "ours.safetensors")
        assert _mode(tmp_path / "ours.safetensors") == 0o640
    finally:
        os.umask(old)
    save_safetensors({"a": torch.zeros(2)}, tmp_path / "default.safetensors")
    assert _mode(tmp_path / "default.safetensors") == 0o666 & ~old


def test_a_saved_edit_is_readable_by_others(tmp_path):
    from bench.backbone import load_backbone

    backbone = load_backbone("mini")
    folder = backbone.save_edit(tmp_path / "edits" / "none__circle", components=("text_encoder",))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    mask = current_umask()
    assert {p.name: _mode(p) for p in files} == {p.name: 0o666 & ~mask for p in files}
    assert _mode(folder) == 0o777 & ~mask


def test_make_readable_walks_a_folder(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("x")
    os.chmod(tmp_path / "d" / "e" / "f", 0o600)
    os.chmod(tmp_path / "d" / "e", 0o700)
    make_readable(tmp_path / "d")
    mask = current_umask()
    assert _mode(tmp_path / "d" / "e" / "f") == 0o666 & ~mask and _mode(tmp_path / "d" / "e") == 0o777 & ~mask
