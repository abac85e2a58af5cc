"""The one stage loop (no Ray): learning-rate schedule, max_steps, validation-selected training,
early stopping with the best state restored, optimizer state as safetensors + JSON."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atflrec.model.network import ModelConfig
from atflrec.training.local import build_model, fit_audio_normalisation, make_collator
from atflrec.training.loop import (
    LoopState,
    OptimConfig,
    StageLoop,
    compute_loss,
    lr_factor,
    read_optimizer_state,
    save_optimizer_state,
    selection_value,
)


def _model(base, strategy: str = "early"):
    config = ModelConfig(base_model=str(base), encoder={"n_mels": 8, "width": 16, "pooling": "mean"},
                         lora={"r": 4, "alpha": 8, "dropout": 0.0}, fusion={"strategy": strategy, "head_hidden": 8})
    return build_model(config, seed=0)


def test_lr_factor_warms_up_then_decays() -> None:
    assert [lr_factor(s, 8, 0, "constant") for s in range(8)] == [1.0] * 8
    assert [lr_factor(s, 8, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = [lr_factor(s, 10, 2, "linear") for s in range(10)]
    assert linear[:3] == [0.5, 1.0, 1.0] and linear[-1] == pytest.approx(0.125)
    assert all(a > b for a, b in zip(linear[2:], linear[3:]))  # strictly decreasing after the warm-up
    cosine = [lr_factor(s, 10, 0, "cosine") for s in range(10)]
    assert (cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5)
            and cosine[-1] == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi))))


def test_the_loop_sets_the_scheduled_lr_on_every_step_and_honours_max_steps(tiny_base_dir, planted) -> None:
    rows, features = planted
    model = _model(tiny_base_dir)
    fit_audio_normalisation(model, sorted(features), features)
    optim = OptimConfig(lr=1e-2, encoder_lr=2e-2, batch_size=4, epochs=3, max_steps=10, warmup_ratio=0.2,
                        schedule="linear")
    seen: list[list[float]] = []

    class Recording(StageLoop):
        def optimizer_step(self) -> None:
            seen.append([g["lr"] for g in self.optimizer.param_groups])
            super().optimizer_step()

    loop = Recording(model, model.fusion.stages()[0], rows, make_collator(model, features), optim)
    result = loop.run()
    assert loop.total_steps() == 10 and loop.warmup_steps() == 2  # 8 steps per epoch, capped at 10
    assert len(result.losses) == 10 and loop.state.step == 10 and loop.state.epoch == 2
    expected = [lr_factor(s, 10, 2, "linear") for s in range(10)]
    assert np.allclose([lrs[0] for lrs in seen], np.array(expected) * 1e-2)
    assert np.allclose([lrs[1] for lrs in seen], np.array(expected) * 2e-2)


def test_patience_stops_a_stage_and_restores_the_best_epoch(tiny_base_dir, planted) -> None:
    """Validation scores scripted per evaluation: AUC 0.625, 0.8125, then 0.625 (worse) -> with
    patience 1 the stage stops after epoch 3 of 6 and the model ends as it was after epoch 2."""
    rows, features = planted
    val = rows[:8]  # 4 positives, 4 negatives
    labels = np.array([r["label"] for r in val])
    shifts = iter([0, 1, 0, 2, 2, 2])
    states: list[dict[str, torch.Tensor]] = []

    def scores_shifted(k: int) -> np.ndarray:
        # negative i scores i, positive j scores j + k + 0.5: (i, j) is ranked right when i - j <= k
        scores = np.zeros(len(val))
        scores[labels == 0] = np.arange(4)
        scores[labels == 1] = np.arange(4) + k + 0.5
        return (scores + 2) / 10

    class Scripted(StageLoop):
        def validation_scores(self) -> np.ndarray:
            return scores_shifted(next(shifts))

        def on_evaluation(self, record, scores) -> None:
            states.append(self.capture_state())

    model = _model(tiny_base_dir)
    optim = OptimConfig(lr=2e-2, encoder_lr=2e-2, batch_size=8, epochs=6, patience=1)
    loop = Scripted(model, model.fusion.stages()[0], rows, make_collator(model, features), optim, val_rows=val)
    result = loop.run()
    assert [e["val_auc"] for e in result.evaluations] == [0.625, 0.8125, 0.625]
    assert result.stopped_early and loop.state.epoch == 3 and loop.state.step == 12
    assert (loop.state.best_epoch, loop.state.best_step, loop.state.bad_evaluations) == (2, 8, 1)
    assert loop.state.stage_done and result.evaluations[-1]["stage_done"]
    now = loop.capture_state()
    assert set(now) == set(states[1]) and all(torch.equal(now[k], states[1][k]) for k in now)
    assert not all(torch.equal(now[k], states[2][k]) for k in now)  # epoch 3 had moved on


def test_selection_falls_back_to_the_log_loss_where_auc_is_undefined() -> None:
    assert selection_value({"auc": 0.7, "log_loss": 0.5}) == 0.7
    assert selection_value({"auc": float("nan"), "log_loss": 0.5}) == pytest.approx(math.exp(-0.5))
    assert selection_value({}) is None


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path) -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 1e-3}])
    for _ in range(3):
        sum((p ** 2).sum() for p in params).backward()
        optimizer.step()
        optimizer.zero_grad()
    save_optimizer_state(optimizer, tmp_path, "opt", world_size=1, step=3)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    state, meta = read_optimizer_state(tmp_path, "opt")
    assert meta == {"world_size": 1, "step": 3}
    fresh = torch.optim.AdamW([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 1.0}])
    fresh.load_state_dict(state)
    a, b = optimizer.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index in a["state"]:
        for key in a["state"][index]:
            assert torch.equal(torch.as_tensor(a["state"][index][key]), torch.as_tensor(b["state"][index][key]))
    assert read_optimizer_state(tmp_path, "missing") is None


def test_loop_state_ignores_unknown_keys() -> None:
    state = LoopState.from_dict({"stage_index": 1, "epoch": 2, "history": []})
    assert (state.stage_index, state.epoch) == (1, 2)
    state.next_stage()
    assert (state.stage_index, state.epoch, state.step, state.best_score) == (2, 0, 0, None)


def test_activation_checkpointing_holds_fewer_activations_and_computes_the_same_gradients(
        tiny_base_dir, planted) -> None:
    """Same loss and adapter gradients with and without it; the forward keeps far fewer tensors for backward."""
    rows, features = planted
    results = {}
    for enabled in (False, True):
        model = _model(tiny_base_dir)
        fit_audio_normalisation(model, sorted(features), features)
        loop = StageLoop(model, model.fusion.stages()[0], rows, make_collator(model, features),
                         OptimConfig(batch_size=4, activation_checkpointing=enabled))
        loop.train_mode()
        batch = make_collator(model, features)(rows[:4])
        saved_bytes = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved_bytes
            saved_bytes += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = compute_loss(model, batch, loop.stage, "fp32", torch.device("cpu"))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[enabled] = (loss.item(), grads, saved_bytes)
    (loss_off, grads_off, saved_off), (loss_on, grads_on, saved_on) = results[False], results[True]
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    assert grads_on.keys() == grads_off.keys() and any("lora_" in n for n in grads_on)
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-4, atol=1e-6)
    assert saved_on < 0.5 * saved_off, (saved_on, saved_off)
