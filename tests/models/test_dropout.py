"""The networks' dropout (`encoders.Dropout`): nn.Dropout's contract with cheaper CPU masks. It drops with
probability p (to 2e-5), keeps the expectation, passes gradients through the kept elements only, is the
identity in eval, follows torch's seed, scripts, and leaves a checkpoint's keys as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from churnwatch.errors import ConfigError
from churnwatch.models.encoders import ChurnNet, Dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_it_drops_p_of_the_elements_and_keeps_the_expectation(p, dtype):
    torch.manual_seed(0)
    x = torch.full((400, 1001), 2.0, dtype=dtype)  # an odd count: the last random word is half used
    y = Dropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / x.numel()) ** 0.5 + 2e-5  # four standard errors
    assert y.dtype == dtype and y.shape == x.shape
    assert abs(y.float().mean().item() - 2.0) < 0.02  # kept ones scaled by 1 / (1 - p)
    kept = y[y != 0].float()
    torch.testing.assert_close(
        kept, torch.full_like(kept, 2.0 / (1 - round(p * 32768) / 32768)), rtol=1e-2, atol=0
    )


def test_the_drops_are_independent_across_positions_and_calls():
    torch.manual_seed(1)
    drop = Dropout(0.5).train()
    a, b = ((drop(torch.ones(200_000)) == 0).float() for _ in range(2))
    # neighbours; the two halves of each random word (positions k and k + n/2); two calls
    for u, v in ((a[0::2], a[1::2]), (a[:100_000], a[100_000:]), (a, b)):
        assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1].item()) < 0.02


def test_gradients_flow_through_the_kept_elements_only_and_eval_is_the_identity():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    drop = Dropout(0.3).train()
    y = drop(x)
    y.sum().backward()
    kept = y.detach() != 0
    torch.testing.assert_close(
        x.grad[kept], torch.full_like(x.grad[kept], 32768 / (32768 - round(0.3 * 32768)))
    )
    assert (x.grad[~kept] == 0).all() and (~kept).any()
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x


def test_a_seed_reproduces_the_masks_and_bad_rates_are_one_line():
    drop = Dropout(0.2).train()
    masks = []
    for _ in range(2):
        torch.manual_seed(3)
        masks.append(drop(torch.ones(5000)) == 0)
    assert torch.equal(*masks)
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.0"):
        Dropout(1.0)


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_every_dropout_of_a_network_is_ours_and_it_scripts_with_nn_dropouts_checkpoint_keys(encoder):
    torch.manual_seed(4)
    net = ChurnNet([6, 5], 3, [1, 2], [4], 1, encoder=encoder, d_model=16, hidden=16, dropout=0.2)
    kinds = {type(m) for m in net.modules()}
    assert Dropout in kinds and nn.Dropout not in kinds
    keys = [k for k in net.state_dict() if "dropout" in k.lower()]
    assert keys == []  # parameter-free, like nn.Dropout: old checkpoints load as they are
    scripted = torch.jit.script(net)
    lengths = torch.tensor([4, 2])
    cat, num = torch.randint(1, 5, (2, 4, 2)), torch.randn(2, 4, 3)
    args = (cat, num, lengths, torch.randint(0, 4, (2, 1)), torch.randn(2, 1), torch.zeros(2, 0))
    torch.testing.assert_close(scripted.eval()(*args), net.eval()(*args))
    torch.manual_seed(5)
    train_eager = net.train()(*args)
    torch.manual_seed(5)
    torch.testing.assert_close(scripted.train()(*args), train_eager)  # the same masks, scripted or not
