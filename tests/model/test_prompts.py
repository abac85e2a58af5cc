import pytest

from atflrec.config import ConfigError, build_config
from atflrec.prompts import AUDIO_TOKEN, PromptConfig, add_audio_token, render_prompt
from atflrec.testing import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tiny_tokenizer()
    add_audio_token(tok)
    return tok


def test_audio_prompt_places_k_placeholders_after_each_title_with_audio(tokenizer, rows, features) -> None:
    prompt = render_prompt(rows[0], tokenizer, PromptConfig(), audio_tokens=2, audio_items=features)
    # liked b, c; disliked d (no audio); target a — in the order they appear in the text.
    assert prompt.audio_item_ids == ("b", "c", "a")
    assert prompt.text.count(AUDIO_TOKEN) == 6
    assert f'"song b" {AUDIO_TOKEN * 2}' in prompt.text
    assert f'"song d"{AUDIO_TOKEN}' not in prompt.text and f'"song d" {AUDIO_TOKEN}' not in prompt.text
    assert prompt.text.startswith("<|im_start|>user\n") and prompt.text.endswith("<|im_start|>assistant\n")


def test_text_prompt_has_no_placeholders(tokenizer, rows, features) -> None:
    prompt = render_prompt(rows[0], tokenizer, PromptConfig(), audio_tokens=0, audio_items=features)
    assert AUDIO_TOKEN not in prompt.text and prompt.audio_item_ids == ()


def test_placeholder_order_follows_the_template_order(tokenizer, rows, features) -> None:
    config = PromptConfig(input_template="Target {target}. Disliked: {disliked}. Liked: {liked}.")
    assert render_prompt(rows[0], tokenizer, config, 1, features).audio_item_ids == ("a", "b", "c")


def test_placeholder_is_one_token(tokenizer) -> None:
    ids = tokenizer(f"x {AUDIO_TOKEN}{AUDIO_TOKEN}y", add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)) == 2


def test_without_chat_template_the_alpaca_layout_is_used(tokenizer, rows) -> None:
    text = render_prompt(rows[0], tokenizer, PromptConfig(use_chat_template=False)).text
    assert text.startswith("### Instruction:\n") and text.endswith("### Response:\n")


def test_template_must_name_every_field_once() -> None:
    with pytest.raises(ConfigError, match="input_template"):
        build_config(PromptConfig, {"input_template": "Liked {liked}; target {target}"})
