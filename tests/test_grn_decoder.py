"""The slot-loop kernel decodes what the eager GRN decodes: same picks, same allowed masks, log-probabilities to
float rounding, under every kind of rule (scatter window, shop cap, pinned slots, their relaxation), padding,
sampling noise and temperature; its gradient kernel gives autograd's gradient of those log-probabilities."""

from __future__ import annotations

import pytest
import torch

from relist.models.generator import Encoded, gumbel_noise
from relist.rerank.grn import GRNRunner, rules_hook
from relist.rerank.grn_decoder import (
    TANH_DENOMINATOR,
    TANH_NUMERATOR,
    TANH_SATURATES,
    DecoderWeights,
    decode_rows,
    logp_gradients,
)
from relist.rerank.rules import BusinessRules


def _rows(grn, seed: int, rows: int = 6, m: int = 13):
    """Random encodings and rule inputs with few categories and shops, so the rules bind and relax often."""
    g = torch.Generator().manual_seed(seed)
    h = grn.cfg.hidden
    mask = torch.rand(rows, m, generator=g) < 0.8
    mask[:, 0] = True
    mask[-1] = False  # a row of padding only: nothing to place
    inputs = {"cate": torch.randint(0, 4, (rows, m), generator=g), "shop": torch.randint(0, 3, (rows, m), generator=g),
              "candidates": torch.randint(1, 9, (rows, m), generator=g), "mask": mask}
    enc = Encoded(torch.randn(rows, m, h, generator=g), torch.randn(rows, h, generator=g).tanh(), mask)
    return enc, inputs


RULES = [None, BusinessRules(cate_window=0), BusinessRules(cate_window=2), BusinessRules(cate_window=3, max_per_shop=1),
         BusinessRules(cate_window=1, max_per_shop=2, pinned={0: 3, 4: 5}), BusinessRules(cate_window=2, pinned={2: 7})]


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("sampled", [False, True])
def test_the_kernel_decodes_what_the_eager_loop_decodes(models, rules, sampled):
    grn = models.generator.eval()
    weights = DecoderWeights.of(grn)
    for seed in range(5):
        enc, inputs = _rows(grn, seed)
        n, temperature = 11, 0.7 if sampled else 1.0  # n > m for some rows: they run out of candidates
        noise = gumbel_noise((len(enc.state), n, enc.mask.shape[1]), torch.Generator().manual_seed(seed)) \
            if sampled else None
        hook = rules_hook(rules, inputs) if rules is not None else None
        with torch.no_grad():
            eager = grn.decode_rows(enc, n, torch.arange(len(enc.state)), hook, noise, temperature, with_allowed=True)
        kernel = decode_rows(weights, enc, inputs, n, rules, noise, temperature)
        assert torch.equal(kernel[0], eager[0]), (seed, kernel[0], eager[0])
        assert torch.equal(kernel[2], eager[2])
        torch.testing.assert_close(kernel[1], eager[1], rtol=1e-4, atol=1e-4)
        assert (kernel[0][-1] == -1).all() and (kernel[0][0] >= 0).any()


@pytest.mark.parametrize("rules", RULES[2:])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_the_gradient_kernel_is_autograds_gradient_of_the_picks_log_probability(models, rules, temperature):
    grn = models.generator.eval()
    weights = DecoderWeights.of(grn)
    for seed in range(3):
        enc, inputs = _rows(grn, seed)
        noise = gumbel_noise((len(enc.state), 11, enc.mask.shape[1]), torch.Generator().manual_seed(seed))
        choice, _, allowed = decode_rows(weights, enc, inputs, 11, rules, noise, temperature)
        eager = GRNRunner(grn).logp_gradients(enc, choice, allowed, temperature)
        kernel = logp_gradients(weights, enc, choice, allowed, temperature)
        assert eager[0].abs().max() > 0.01
        for ours, theirs in zip(kernel, eager, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)


def test_the_tanh_fraction_is_tanh_to_float32_rounding():
    x = torch.linspace(-12, 12, 100_001, dtype=torch.float64)
    clipped = x.clamp(-TANH_SATURATES, TANH_SATURATES)
    y = clipped ** 2
    p, q = (torch.tensor(c, dtype=torch.float64) for c in (TANH_NUMERATOR, TANH_DENOMINATOR))
    fraction = clipped * sum(c * y ** i for i, c in enumerate(p)) / sum(c * y ** i for i, c in enumerate(q))
    assert (fraction.clamp(-1, 1) - x.tanh()).abs().max() < 5e-7
