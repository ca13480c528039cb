"""The transformer's own encoder layer (`encoders.EncoderLayer`): `nn.TransformerEncoderLayer`'s parameters
and outputs, with attention computed step by step in CPU training so its dropout is ours."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from churnwatch.errors import ConfigError
from churnwatch.models.encoders import Dropout, SelfAttention, TimeEncoding, TransformerEncoder


class TorchEncoder(nn.Module):
    """The encoder as it was built on torch's layer (pre-norm, gelu, batch first), for comparison."""

    def __init__(self, d_model: int, n_time: int, num_layers: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.time = TimeEncoding(n_time, d_model, max_len=4096)
        layer = nn.TransformerEncoderLayer(
            d_model, 4, 4 * d_model, 0.1, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        x = x + self.time(time, mask.sum(dim=1), self.causal)
        n = x.shape[1]
        future = torch.ones(n, n, dtype=torch.bool).triu(1) if self.causal else None
        return self.norm(self.encoder(x, mask=future, src_key_padding_mask=~mask))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)
    lengths = torch.tensor([12, 3, 7, 1, 9])
    mask = torch.arange(12)[None, :] < lengths[:, None]
    return torch.randn(5, 12, 32), mask, torch.randn(5, 12, 6)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_the_layer_has_torchs_parameters_initial_values_and_outputs(causal: bool) -> None:
    """Same seed, same initial weights under the same names (checkpoints of either load into the other);
    same outputs at every real step (padding is masked downstream), and the scripted model agrees."""
    torch.manual_seed(0)
    ours = TransformerEncoder(32, 6, num_layers=3, causal=causal)
    torch.manual_seed(0)
    theirs = TorchEncoder(32, 6, 3, causal)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x, mask, time = _batch()
    with torch.no_grad():
        ours.eval(), theirs.eval()
        got, expected = ours(x, mask, time)[mask], theirs(x, mask, time)[mask]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        scripted = torch.jit.script(ours)
        torch.testing.assert_close(scripted(x, mask, time), ours(x, mask, time))


def test_cpu_training_attends_step_by_step_as_the_fused_attention_does_and_drops_with_our_masks() -> None:
    """The step-by-step path (CPU training with dropout) equals scaled_dot_product_attention when its mask
    keeps everything; with dropout it differs from eval, reproducibly for a seed, and gradients flow."""
    torch.manual_seed(1)
    attention = SelfAttention(32, 4, dropout=0.3)
    x, mask, _ = _batch()
    blocked = ~mask[:, None, None, :]
    assert isinstance(attention.dropout, Dropout)
    fused = attention.eval()(x, blocked)
    attention.dropout = Dropout(0.0)  # the step-by-step path, nothing dropped
    torch.testing.assert_close(attention.train()(x, blocked)[mask], fused[mask], atol=1e-5, rtol=1e-5)
    attention.dropout = Dropout(0.3)
    torch.manual_seed(2)
    dropped = attention(x.requires_grad_(), blocked)
    torch.manual_seed(2)
    assert torch.equal(attention(x, blocked), dropped)
    assert not torch.allclose(dropped[mask], fused[mask], atol=1e-3)
    (grad,) = torch.autograd.grad(dropped[mask].sum(), x)
    assert torch.isfinite(grad).all() and grad[mask].abs().sum() > 0
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        SelfAttention(30, 4)
