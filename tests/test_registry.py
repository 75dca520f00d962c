"""Methods are found by name, including methods of other installed packages (entry points)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bench.registry import Registry, UnknownNameError
from methods import METHODS, get_method
from tests.cli import erasebench_process

PLUGIN = textwrap.dedent(
    '''
    from dataclasses import dataclass

    import torch

    from methods.base import Method, MethodConfig


    @dataclass
    class ScaleConfig(MethodConfig):
        factor: float = 0.5


    class ScaleMethod(Method):
        """A user's own variant, living outside erasebench: scales every cross-attention value projection."""

        name = "plugin-scale"
        family = "closed-form"
        description = "test plugin: scales attn2.to_v"
        config_class = ScaleConfig

        def apply(self, backbone, request):
            edited = backbone.copy()
            with torch.no_grad():
                for name, module in edited.unet.named_modules():
                    if name.endswith("attn2.to_v"):
                        module.weight.mul_(self.config.factor)
            return edited
    '''
)


@pytest.fixture()
def plugin_path(tmp_path):
    pkg = tmp_path / "my_erasure_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)
    dist = tmp_path / "my_erasure_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-erasure-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[erasebench.methods]\nplugin-scale = my_erasure_plugin:ScaleMethod\n")
    return tmp_path


def run_py(code: str, path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_method_from_another_package_is_found_through_its_entry_point(plugin_path):
    listed = run_py("from bench.cli import main; main(['list', 'methods'])", plugin_path)
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith("plugin-scale\t") for line in listed.stdout.splitlines())
    code = textwrap.dedent(
        """
        from bench.backbone import load_backbone
        from methods import ErasureRequest, get_method
        base = load_backbone("mini")
        method = get_method("plugin-scale", {"factor": 0.0})
        edited = method.apply(base, ErasureRequest(targets=["circle"]))
        print(edited.fingerprint() != base.fingerprint(), base.fingerprint() == load_backbone("mini").fingerprint())
        """
    )
    applied = run_py(code, plugin_path)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split()[-2:] == ["True", "True"]
    # without the plugin on the path the name is unknown (and the listing itself still works)
    bare = erasebench_process("list", "methods", timeout=300)
    assert bare.returncode == 0, bare.stderr
    names = [line.split("\t")[0] for line in bare.stdout.splitlines()]
    assert "uce" in names and "plugin-scale" not in names


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        METHODS.get("nope")
    assert "unknown method 'nope' (did you mean 'none'?); valid:" in str(err.value) and "uce" in str(err.value)


def test_typed_config_rejects_bad_parameters():
    with pytest.raises(ValueError, match="unknown parameter"):
        get_method("none", {"strength": 1})
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)
