"""Where an evaluator's weight file comes from: a local file first, else its library's own cache and download.

Order, for every evaluator that needs a weight file:

1. the evaluator param ``weights`` (a file, or a folder searched for the accepted file names);
   when it is given and holds no such file, that is an error (no silent download);
2. ``$ERASEBENCH_WEIGHTS`` (default ``~/.cache/erasebench/weights``), the offline override;
3. the library's usual cache (torch hub's ``checkpoints/`` for torchvision and torch-fidelity,
   the Hugging Face cache for open_clip), looked up without network;
4. the library's own download (``Weights.get_state_dict``, ``open_clip`` pretrained tags,
   torch-fidelity through torchmetrics), into that cache.

A :class:`WeightSource` describes one file for steps 2-4; ``erasebench fetch`` walks the sources
of a suite with the same code. Whatever file is used, its SHA-256 goes into the run manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


class WeightsNotFoundError(FileNotFoundError):
    """An evaluator's weight file is missing; the message names it on one line."""

    def __str__(self) -> str:
        return str(self.args[0])


def weights_root() -> Path:
    return Path(os.environ.get("ERASEBENCH_WEIGHTS", Path.home() / ".cache" / "erasebench" / "weights")).expanduser()


def find_file(folder: Path, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` directly in ``folder``, else anywhere below it."""
    if not folder.is_dir():
        return None
    for name in filenames:
        if (folder / name).is_file():
            return folder / name
    for name in filenames:
        found = sorted(folder.rglob(name))
        if found:
            return found[0]
    return None


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file of ``url`` (torchvision, torch-fidelity)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


@dataclass(frozen=True)
class WeightSource:
    """One weight file: the names it is accepted under, its library cache and the library's download.

    ``cached()`` looks in the library cache without network (None when absent); ``download()``
    runs the library's own download and returns the file; ``origin`` says where it comes from.
    """

    evaluator: str
    description: str
    filenames: tuple[str, ...]
    origin: str
    cached: Callable[[], Path | None]
    download: Callable[[], Path]
    cache_location: str = ""  # where the library keeps the file (for the "missing" line)

    def local(self, value: str | Path | None = None) -> Path | None:
        """Steps 1-2: the param ``weights`` or ``$ERASEBENCH_WEIGHTS`` (raises when ``value`` is given but holds no file)."""
        if value is not None:
            p = Path(value).expanduser()
            if p.is_file():
                return p
            found = find_file(p, self.filenames)
            if found is None:
                where = p if p.exists() else f"{p} (does not exist)"
                raise WeightsNotFoundError(f"{self.evaluator}: weight file {self.filenames[0]} not found in {where}; "
                                           "set the evaluator param 'weights' to the file or its folder")
            return found
        return find_file(weights_root(), self.filenames)

    def missing_line(self, reason: str = "") -> str:
        """One line: what is missing and where to put it."""
        also = f" or {self.filenames[1]}" if len(self.filenames) > 1 else ""
        return (f"{self.evaluator}: {self.description}: put {self.filenames[0]}{also} (from {self.origin}) under "
                f"$ERASEBENCH_WEIGHTS ({weights_root()})"
                f"{' or at ' + self.cache_location if self.cache_location else ''}"
                f"{' (' + reason + ')' if reason else ''}")

    def resolve(self, value: str | Path | None = None, download: bool = True) -> Path:
        """The file to load (steps 1-4). Raises :class:`WeightsNotFoundError` with :meth:`missing_line`."""
        found = self.local(value) or self.cached()
        if found is not None:
            return found
        if not download:
            raise WeightsNotFoundError(self.missing_line("not cached"))
        try:
            return Path(self.download())
        except Exception as exc:  # the libraries raise URLError, OSError, HF hub errors...: all mean "not fetched"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
            raise WeightsNotFoundError(self.missing_line(f"download failed: {reason}")) from exc


# --------------------------------------------------------------------------- torchvision
def torchvision_source(evaluator: str, weights_enum: str, variant: str, extra_names: tuple[str, ...] = ()) -> WeightSource:
    """A torchvision weights enum member (``ResNet50_Weights.IMAGENET1K_V2``): torch hub cache and
    ``Weights.get_state_dict`` (the torchvision download, hash-checked)."""
    import torchvision.models as tvm

    enum = getattr(tvm, weights_enum)
    try:
        member = enum[variant]
    except KeyError:
        raise ValueError(f"{evaluator}: unknown {weights_enum} variant {variant!r}; valid: "
                         f"{', '.join(m.name for m in enum)}") from None
    name = Path(member.url).name
    stem = name.rsplit(".", 1)[0]

    def cached() -> Path | None:
        p = torch_hub_file(member.url)
        return p if p.is_file() else None

    def download() -> Path:
        member.get_state_dict(progress=True, check_hash=True)
        return torch_hub_file(member.url)

    return WeightSource(evaluator, f"torchvision {weights_enum}.{variant}", (name, f"{stem}.safetensors", *extra_names),
                        member.url, cached, download, str(torch_hub_file(member.url)))


# --------------------------------------------------------------------------- open_clip
def open_clip_source(model: str, pretrained: str, filenames: tuple[str, ...]) -> WeightSource:
    """An open_clip pretrained tag: the Hugging Face (or open_clip URL) cache and ``open_clip.download_pretrained``."""
    from open_clip import pretrained as oc

    cfg = oc.get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise ValueError(f"clip: open_clip has no pretrained tag {pretrained!r} for {model}; valid: "
                         f"{', '.join(oc.list_pretrained_tags_by_model(model)) or 'none'} (or give 'weights')")
    hub = cfg.get("hf_hub", "")
    origin = f"huggingface.co/{hub}" if hub else cfg.get("url", "")

    def cached() -> Path | None:
        if hub:
            from huggingface_hub import hf_hub_download

            repo, filename = os.path.split(hub)  # 'org/model/' -> no file name: open_clip's default names
            for name in ([filename] if filename else [oc.HF_SAFE_WEIGHTS_NAME, oc.HF_WEIGHTS_NAME]):
                try:
                    return Path(hf_hub_download(repo, name, local_files_only=True))
                except Exception:  # not in the HF cache
                    continue
            return None
        url = cfg.get("url", "")
        p = Path(os.path.expanduser("~/.cache/clip")) / Path(url).name
        return p if url and p.is_file() else None

    def download() -> Path:
        return Path(oc.download_pretrained(cfg))

    if hub:
        from huggingface_hub import constants

        location = f"{constants.HF_HUB_CACHE} (hf download {os.path.split(hub)[0]})"
    else:
        location = str(Path(os.path.expanduser("~/.cache/clip")) / Path(cfg.get("url", "")).name)
    return WeightSource("clip", f"open_clip {model} ({pretrained})", filenames, origin, cached, download, location)


# --------------------------------------------------------------------------- FID Inception (torch-fidelity)
def fid_inception_source(evaluator: str, filenames: tuple[str, ...]) -> WeightSource:
    """torch-fidelity's FID Inception (the TF 2015-12-05 weights): torch hub cache and its own download."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    def cached() -> Path | None:
        p = torch_hub_file(URL_INCEPTION_V3)
        return p if p.is_file() else None

    def download() -> Path:
        from torchmetrics.image.fid import NoTrainInceptionV3

        NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])  # downloads into the torch hub cache
        return torch_hub_file(URL_INCEPTION_V3)

    return WeightSource(evaluator, "FID Inception-v3 (TF 2015-12-05, torch-fidelity)", filenames, URL_INCEPTION_V3,
                        cached, download, str(torch_hub_file(URL_INCEPTION_V3)))
