"""`erasebench --plugin FILE.py`: a method from a file, without packaging it (docs/plugins.md).

The example plugin of the guide, docs/examples/word_swap.py, is the one tested: it really edits (the target word's
token embedding becomes the anchor's). Commands that load it run in their own process, since a loaded plugin stays
registered in the process that loaded it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.plugins import PluginError, take_plugin_args
from tests.cli import erasebench_process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "word_swap.py"


def test_plugin_flags_are_taken_wherever_they_stand():
    argv = ["--plugin", "a.py", "run", "--plugin=b.py", "--methods", "x", "--", "--plugin", "c.py"]
    rest, files = take_plugin_args(argv)
    assert files == [Path("a.py"), Path("b.py")]
    assert rest == ["run", "--methods", "x", "--", "--plugin", "c.py"]
    with pytest.raises(PluginError, match="give the path"):
        take_plugin_args(["list", "--plugin"])


def test_a_missing_or_failing_plugin_file_is_one_line_exit_2(tmp_path, cli_here):
    missing = cli_here("--plugin", tmp_path / "nope.py", "list", "methods")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"erasebench: error: --plugin {tmp_path / 'nope.py'}: no such Python file (give the path of a .py file)"]
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_for_erasebench\n")
    failed = cli_here("--plugin", broken, "list", "methods")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"erasebench: error: --plugin {broken}: ModuleNotFoundError: No module named 'no_such_module_for_erasebench'"]


def test_plugin_methods_are_listed_and_submit_refuses_the_flag(tmp_path):
    listed = erasebench_process("--plugin", EXAMPLE, "list", "methods", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert any(line.startswith("word-swap\t") for line in listed.stdout.splitlines())
    refused = erasebench_process("--plugin", EXAMPLE, "submit", "--out", tmp_path / "s", "--shards", "2", cwd=tmp_path)
    assert refused.returncode == 2 and "--plugin does not reach the jobs of `submit`" in refused.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_plugin_method_from_a_file_runs_edits_and_takes_method_args(tmp_path):
    """Two worker processes (each loads the file from the command line it is given); the plugin's row erases the
    target where the unedited model does not (measured: target erasure 1.000 vs 0.000, 6 images each)."""
    out = tmp_path / "run"
    run = erasebench_process("--plugin", EXAMPLE, "run", "--methods", "none", "word-swap", "--targets", "circle",
                             "--suite", "mini-quick", "--tier", "smoke", "--method-args",
                             "word-swap:anchor=heart,strength=1", "--workers", "2", "--out", out, "--quiet",
                             cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    spec = next(m for m in manifest["config"]["methods"] if m["name"] == "word-swap")
    assert spec["params"] == {"anchor": "heart", "strength": 1.0}  # --method-args, typed, in the recorded config
    assert manifest["methods"]["word-swap"]["config"] == {"anchor": "heart", "strength": 1.0}
    edit = json.loads((out / "edits" / "word-swap__circle" / "edit.json").read_text())
    assert "word-swap" in json.dumps(edit)
    assert (out / "edits" / "word-swap__circle" / "text_encoder").is_dir()
    rows = json.loads((out / "summary.json").read_text())["rows"]

    def value(method, task, metric):
        (row,) = [r for r in rows if (r["method"], r["target"], r["task"], r["metric"]) ==
                  (method, "circle", task, metric)]
        return row["value"]

    assert value("word-swap", "target", "erasure_rate") >= value("none", "target", "erasure_rate") + 0.5
    assert value("word-swap", "other-objects", "accuracy") >= value("none", "other-objects", "accuracy") - 0.34
