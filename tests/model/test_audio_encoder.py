import pytest
import torch

from atflrec.config import ConfigError, build_config
from atflrec.model.audio_encoder import POOLINGS, AudioEncoder, AudioEncoderConfig


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("tokens", [1, 3])
def test_every_pooling_gives_k_tokens_of_hidden_size(pooling: str, tokens: int) -> None:
    torch.manual_seed(0)
    encoder = AudioEncoder(AudioEncoderConfig(n_mels=8, width=16, pooling=pooling, tokens_per_item=tokens),
                           hidden_size=32)
    out = encoder(torch.randn(5, 7, 8))
    assert out.shape == (5, tokens, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_padded_frames_do_not_change_the_output(pooling: str) -> None:
    torch.manual_seed(0)
    encoder = AudioEncoder(AudioEncoderConfig(n_mels=8, width=16, pooling=pooling), hidden_size=32).eval()
    clip = torch.randn(1, 5, 8)
    padded = torch.cat([clip, torch.full((1, 3, 8), 50.0)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(encoder(padded, mask), encoder(clip), rtol=0, atol=1e-6)


def test_frame_layers_use_silu_and_configured_depth() -> None:
    encoder = AudioEncoder(AudioEncoderConfig(n_mels=8, width=16, layers=3), hidden_size=32)
    linears = [m for m in encoder.frames if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [16, 16, 16]
    assert sum(isinstance(m, torch.nn.SiLU) for m in encoder.frames) == 3


def test_unknown_pooling_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="pooling"):
        build_config(AudioEncoderConfig, {"pooling": "median"})
