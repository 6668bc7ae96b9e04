"""The padding convention every model, loss and metric relies on, tested once."""

import numpy as np
import torch

from relist.data.padding import NEG_INF, PAD_ID, length_mask, masked_fill_logits, masked_mean, pad_lists


def test_pad_lists_right_pads_with_pad_id_and_cuts_long_lists():
    values, mask = pad_lists([[3, 4], [], [5, 6, 7]])
    assert values.tolist() == [[3, 4, PAD_ID], [PAD_ID] * 3, [5, 6, 7]]
    assert mask.tolist() == [[True, True, False], [False] * 3, [True] * 3]
    values, mask = pad_lists([[1, 2, 3]], length=2)
    assert values.tolist() == [[1, 2]] and mask.all()


def test_length_mask_marks_the_first_lengths_entries():
    assert length_mask(np.array([0, 2, 3]), 3).tolist() == [[False] * 3, [True, True, False], [True] * 3]


def test_softmax_over_masked_logits_has_no_nan_even_when_a_row_is_fully_masked():
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    filled = masked_fill_logits(logits, mask)
    assert filled[0, 2] == NEG_INF
    probs = torch.softmax(filled, dim=-1)
    assert not probs.isnan().any()
    assert probs[0, 2] == 0 and torch.allclose(probs[0, :2].sum(), torch.tensor(1.0))


def test_masked_mean_ignores_padding_and_gives_zero_for_empty_rows():
    values = torch.tensor([[1.0, 3.0, 100.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(values, mask).tolist() == [2.0, 0.0]
    vectors = values[..., None].expand(2, 3, 4)  # a mask over items also masks their feature vectors
    assert masked_mean(vectors, mask, dim=1).tolist() == [[2.0] * 4, [0.0] * 4]
