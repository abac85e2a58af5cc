import pytest
import torch

from atflrec.base_model.fetch import load_base_model
from atflrec.model.adapters import adapter_parameters
from atflrec.model.batch import AUDIO, TEXT
from atflrec.model.fusion import STRATEGIES
from atflrec.model.scoring import probability, yes_no_token_ids
from atflrec.prompts import PromptConfig
from atflrec.training.local import build_model, make_collator


@pytest.fixture
def build(model_config, features):
    def make(strategy: str = "early", **kwargs):
        model = build_model(model_config(strategy, **kwargs), seed=0)
        return model, make_collator(model, features)

    return make


def test_yes_no_ids_come_from_the_tokenizer(tiny_base) -> None:
    _, tokenizer = load_base_model(str(tiny_base))
    yes, no = yes_no_token_ids(tokenizer, PromptConfig())
    assert tokenizer.decode([yes]) == "Yes" and tokenizer.decode([no]) == "No"
    # Without a chat template the Alpaca prompt ends in a newline too: same (no-space) spelling.
    assert yes_no_token_ids(tokenizer, PromptConfig(use_chat_template=False)) == (yes, no)


def test_yes_no_lookup_picks_the_leading_space_variant_after_text(tiny_base) -> None:
    _, tokenizer = load_base_model(str(tiny_base))
    tokenizer.chat_template = "{{ messages[-1]['content'] }} Answer:{% if add_generation_prompt %} {% endif %}"
    yes, no = yes_no_token_ids(tokenizer, PromptConfig())
    assert tokenizer.convert_ids_to_tokens([yes, no]) == ["ĠYes", "ĠNo"]


def test_soft_tokens_land_exactly_at_the_placeholders(build, rows) -> None:
    model, collator = build("early", tokens_per_item=2)
    inputs = collator(rows).prompts[AUDIO]
    soft = model.encoder(inputs.audio, inputs.audio_mask).reshape(-1, 32)
    plain = model.llm.get_input_embeddings()(inputs.input_ids.masked_fill(inputs.input_ids == model.audio_token_id, 0))
    embeds = model.embed(inputs.input_ids, lambda: model.encoded_audio(inputs))
    slots = inputs.input_ids == model.audio_token_id
    assert int(slots.sum()) == soft.shape[0] == 2 * inputs.audio.shape[0]
    assert torch.equal(embeds[slots], soft)  # row by row, left to right, k tokens per item
    assert torch.equal(embeds[~slots], plain[~slots])
    # Row 0 cites b, c (liked), a (target); d has no audio. Its first two slots are b's two tokens.
    assert torch.equal(embeds[0][slots[0]][:2], soft[:2])


@pytest.mark.parametrize(("strategy", "adapters", "kinds"), [
    ("early", ("shared",), (AUDIO,)),
    ("late_weighted", ("text", "audio"), (AUDIO, TEXT)),
    ("text_only", ("text",), (TEXT,)),
])
def test_lora_configurations(build, strategy, adapters, kinds) -> None:
    model, _ = build(strategy)
    assert model.adapters == adapters
    assert set(model.llm.peft_config) == set(adapters)
    assert model.prompt_kinds == tuple(sorted(kinds))
    for name in adapters:
        config = model.llm.peft_config[name]
        assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 8, {"q_proj", "v_proj"})
        assert adapter_parameters(model.llm, name)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_fusion_scores_and_each_stage_trains_only_its_parts(build, rows, strategy) -> None:
    model, collator = build(strategy)
    batch = collator(rows)
    with torch.no_grad():
        scores = probability(model.eval()(batch))
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    for stage in model.fusion.stages():
        trainable = model.configure_stage(stage)
        model.train()
        model.zero_grad(set_to_none=True)
        model(batch, stage).sum().backward()
        with_grad = {id(p) for p in model.parameters() if p.grad is not None}
        assert with_grad and with_grad <= {id(p) for p in trainable}
        if stage.adapter is not None:
            others = [p for a in model.adapters if a != stage.adapter for p in adapter_parameters(model.llm, a)]
            assert all(p.grad is None for p in others)
        if stage.train_fusion:
            assert with_grad == {id(p) for p in model.fusion.parameters()}


def test_late_head_starts_as_the_average_of_the_adapter_margins(build, rows) -> None:
    model, collator = build("late_head")
    batch = collator(rows)
    model.eval()
    with torch.no_grad():
        text = model.run_adapter("text", batch.prompts[TEXT]).margin
        audio = model.run_adapter("audio", batch.prompts[AUDIO]).margin
        torch.testing.assert_close(model(batch), (text + audio) / 2)


def test_scores_do_not_depend_on_batch_padding(build, rows) -> None:
    model, collator = build("late_weighted")
    model.eval()
    with torch.no_grad():
        together = model(collator(rows))
        alone = torch.cat([model(collator([r])) for r in rows])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", ["late_weighted", "late_head"])
def test_history_share_enters_late_fusion_through_one_learned_weight(build, rows, strategy) -> None:
    """Off, or at its initial weight 0, the history changes nothing; with a weight, the margin moves by
    weight x log((liked + 0.5) / (disliked + 0.5)) of each row's history."""
    plain, collator = build(strategy)
    shared, _ = build(strategy, history_share=True)
    assert plain.fusion.history_weight is None
    batch = collator(rows)
    with torch.no_grad():
        base = plain.eval()(batch)
        torch.testing.assert_close(shared.eval()(batch), base)
        shared.fusion.history_weight.fill_(2.0)
        moved = shared(batch) - base
    liked = torch.tensor([2.0, 0.0, 1.0])
    disliked = torch.tensor([1.0, 2.0, 0.0])
    torch.testing.assert_close(moved, 2.0 * torch.log((liked + 0.5) / (disliked + 0.5)))
    fusion_stage = next(s for s in shared.fusion.stages() if s.train_fusion)
    assert any(p is shared.fusion.history_weight for p in shared.configure_stage(fusion_stage))


def test_stage_rows_give_a_fusion_stage_fit_on_validation_equal_shares_of_the_held_out_rows() -> None:
    from atflrec.model.fusion import FusionConfig, LateWeighted, stage_rows

    text, _, fusion = LateWeighted.stages()
    held_out = FusionConfig(fit_on="validation")
    train, validation = list(range(10)), list(range(100, 107))
    assert stage_rows(text, held_out, train, validation) == train  # adapters always train on training rows
    assert stage_rows(fusion, FusionConfig(), train, validation) == train
    assert stage_rows(fusion, held_out, train, validation) == validation
    shares = [stage_rows(fusion, held_out, train, validation, rank, 2) for rank in (0, 1)]
    assert shares == [[100, 102, 104], [101, 103, 105]]  # equal sizes: every rank takes as many steps
    assert stage_rows(fusion, held_out, train, []) == train  # nothing held out: the training rows
