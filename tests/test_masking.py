"""Masking generators (MAE-ST, arXiv 2205.09113, Sec. 3; METHODS.md §2 "Facts a test can check")."""

import pytest
import torch

from tubelet.data.masking import MASK_TYPES, mask_tokens, num_kept

GRID = (8, 14, 14)  # 16x224x224 with 2x16x16 tubelets


@pytest.mark.parametrize("ratio,kept", [(0.9, 156), (0.95, 78), (0.75, 392), (0.0, 1568)])
def test_random_token_counts(ratio, kept):
    m = mask_tokens(3, GRID, ratio)
    assert m.num_tokens == 1568
    assert m.keep.shape == (3, kept)
    assert m.masked.shape == (3, 1568 - kept)
    assert num_kept(1568, ratio) == kept


def test_num_kept_is_floor_without_rounding_loss():
    assert num_kept(10, 0.9) == 1  # 10 * (1 - 0.9) = 0.999... in binary
    assert num_kept(1568, 0.9) == 156
    assert 1568 - num_kept(1568, 0.9) == 1412  # mask tokens inserted by the decoder
    with pytest.raises(ValueError):
        num_kept(10, 1.0)


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_masks_are_disjoint_complete_and_restorable(mask_type):
    m = mask_tokens(4, GRID, 0.75, mask_type, generator=torch.Generator().manual_seed(1))
    N = m.num_tokens
    both = torch.cat([m.keep, m.masked], 1)
    # disjoint and complete: together they are a permutation of 0..N-1 for every sample
    assert torch.equal(both.sort(1).values, torch.arange(N).expand(4, N))
    for b in range(4):
        assert not set(m.keep[b].tolist()) & set(m.masked[b].tolist())
    # un-shuffling restores token order
    assert torch.equal(torch.gather(both, 1, m.ids_restore), torch.arange(N).expand(4, N))
    # dense mask agrees with the index form
    dense = m.dense()
    assert dense.sum().item() == m.masked.numel()
    assert torch.all(torch.gather(dense, 1, m.keep) == 0) and torch.all(torch.gather(dense, 1, m.masked) == 1)


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_masks_are_reproducible_and_differ_per_sample(mask_type):
    a = mask_tokens(4, GRID, 0.75, mask_type, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(4, GRID, 0.75, mask_type, generator=torch.Generator().manual_seed(7))
    c = mask_tokens(4, GRID, 0.75, mask_type, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.dense(), c.dense())
    assert not torch.equal(a.dense()[0], a.dense()[1])  # each sample has its own mask


def test_tube_mask_is_the_same_for_every_time():
    m = mask_tokens(2, GRID, 0.9, "tube", generator=torch.Generator().manual_seed(0))
    dense = m.dense().view(2, 8, 196)
    assert torch.equal(dense, dense[:, :1].expand_as(dense))
    assert m.keep.shape == (2, num_kept(196, 0.9) * 8)  # 19 locations x 8 times = 152


def test_frame_mask_removes_whole_time_slices():
    m = mask_tokens(2, GRID, 0.75, "frame", generator=torch.Generator().manual_seed(0))
    per_frame = m.dense().view(2, 8, 196).mean(2)
    assert set(per_frame.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(per_frame.sum(1), torch.tensor([6.0, 6.0]))


def test_cube_mask_removes_whole_blocks():
    m = mask_tokens(2, GRID, 0.75, "cube", block=(2, 2, 2), generator=torch.Generator().manual_seed(0))
    d = m.dense().view(2, 4, 2, 7, 2, 7, 2)  # (B, T/2, 2, H/2, 2, W/2, 2)
    per_block = d.permute(0, 1, 3, 5, 2, 4, 6).reshape(2, 196, 8)
    assert torch.equal(per_block.min(2).values, per_block.max(2).values)  # each block all-kept or all-removed
    assert m.keep.shape == (2, 49 * 8)
    with pytest.raises(ValueError):
        mask_tokens(1, (8, 14, 14), 0.75, "cube", block=(3, 2, 2))


def test_random_mask_matches_sort_noise_reference():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m = mask_tokens(2, (2, 3, 4), 0.5, generator=g1)
    noise = torch.rand(2, 24, generator=g2)  # MAE reference: argsort of uniform noise, keep the first K
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(m.keep, ids_shuffle[:, :12])
    assert torch.equal(m.ids_restore, torch.argsort(ids_shuffle, dim=1))


def test_unknown_type_is_an_error():
    with pytest.raises(ValueError, match="unknown mask type"):
        mask_tokens(1, GRID, 0.9, "checkerboard")
