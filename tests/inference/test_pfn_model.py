"""PFN transformer: the attention mask, query independence, permutation invariance, no positional encoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uqkit.inference.pfn import PFNConfig, PFNTransformer, pfn_attention_mask
from uqkit.inference.pfn.model import pfn_attention


def _net(input_dim: int = 2) -> PFNTransformer:
    torch.manual_seed(0)
    return PFNTransformer(PFNConfig(max_input_dim=3, num_outputs=7, d_model=16, num_heads=2, num_layers=2, d_ff=32)).double()


def test_mask_allows_training_tokens_and_self_only():
    allowed = pfn_attention_mask(5, 2)
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 0, 1]],
                            dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_fast_attention_equals_masked_attention(generator):
    for num_train in (0, 1, 4, 9):
        q, k, v = (torch.randn(2, 3, 9, 5, generator=generator) for _ in range(3))
        reference = F.scaled_dot_product_attention(q, k, v, attn_mask=pfn_attention_mask(9, num_train))
        torch.testing.assert_close(pfn_attention(q, k, v, num_train), reference)


def test_changing_a_query_never_changes_another_query(generator):
    net = _net()
    x_train, y_train = torch.rand(1, 6, 2, generator=generator), torch.randn(1, 6, generator=generator)
    x_test = torch.rand(1, 5, 2, generator=generator)
    base = net(x_train, y_train, x_test)
    changed = x_test.clone()
    changed[0, 2] = torch.tensor([5.0, -3.0])
    out = net(x_train, y_train, changed)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(out[0, keep], base[0, keep], rtol=0, atol=1e-12)
    assert not torch.allclose(out[0, 2], base[0, 2])
    # a query predicted alone equals the same query predicted among others
    torch.testing.assert_close(net(x_train, y_train, x_test[:, 3:4])[0, 0], base[0, 3], rtol=0, atol=1e-12)


def test_permuting_the_training_set_does_not_change_predictions(generator):
    net = _net()
    x_train, y_train = torch.rand(2, 8, 2, generator=generator), torch.randn(2, 8, generator=generator)
    x_test = torch.rand(2, 4, 2, generator=generator)
    perm = torch.randperm(8, generator=generator)
    torch.testing.assert_close(net(x_train[:, perm], y_train[:, perm], x_test), net(x_train, y_train, x_test))
    # the context does matter: changing one training target changes the predictions
    y2 = y_train.clone()
    y2[:, 0] += 1.0
    assert not torch.allclose(net(x_train, y2, x_test), net(x_train, y_train, x_test))


def test_empty_context_and_zero_padding(generator):
    net = _net()
    x_test = torch.rand(1, 3, 2, generator=generator)
    out = net(x_test[:, :0], torch.zeros(1, 0), x_test)
    assert out.shape == (1, 3, 7) and bool(torch.isfinite(out).all())
    padded = torch.cat([x_test, torch.zeros(1, 3, 1)], dim=-1)
    torch.testing.assert_close(net(padded[:, :0], torch.zeros(1, 0), padded), out)
