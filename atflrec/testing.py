"""Tiny stand-ins for the real base model, built locally in well under a second, for tests;
:func:`registered_checkpoint`, for tests that interrupt a run; and :func:`memory_status`, for
tests and benchmarks that measure a process's memory.

``build_tiny_base(dir)`` writes a Hugging Face model directory (a 2-layer Llama and a byte-level
BPE tokenizer with a ChatML chat template) that ``load_base_model(dir)`` reads like the real
SmolLM2 directory. The tokenizer is trained on a few words, so every title still tokenizes (byte
fallback) while "Yes"/"No" stay single tokens, with and without a leading space.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "Given the user's preference and unpreference, identify whether the user will like the target song",
    'by answering "Yes." or "No." User Preference: User Unpreference: Whether the user will like',
    "system user assistant Yes No Yes. No. yes no",
    "song music track rock jazz pop calm fast slow bright dark title tag",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    # Repeat the answer words so they merge into single tokens in both spellings.
    backend.train_from_iterator(_CORPUS * 4 + ["Yes No\nYes\nNo Yes No"] * 50, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_base(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer to ``directory``; returns it (usable as a base-model ref)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def registered_checkpoint(run: str | Path) -> bool:
    """Whether Ray Train has recorded a checkpoint in the snapshot of run directory ``run`` (a path
    or URI). A checkpoint's directory appears before the controller registers it, and a run killed
    in between resumes from scratch, so a test that interrupts a run waits for this."""
    from atflrec.storage import join, read_text

    try:
        snapshot = json.loads(read_text(join(str(run), "checkpoint_manager_snapshot.json")) or "{}")
    except json.JSONDecodeError:  # being rewritten
        return False
    return snapshot.get("latest_checkpoint_result") is not None


def memory_status(pid: int | str = "self") -> dict[str, int]:
    """A process's ``VmRSS``, ``VmHWM`` (the kernel's peak resident set) and ``RssAnon`` (resident
    memory no file backs: what freed and leaked tensors show in), in bytes, from Linux's
    ``/proc/<pid>/status``."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            values[key] = int(rest.split()[0]) * 1024  # the file counts kB
    return values
