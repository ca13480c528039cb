"""EventBatch: padded slices of the flat arrays, last real step, and the length-bucketing sampler."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from churnwatch.errors import ConfigError
from churnwatch.features.encode import EncodedSequences
from churnwatch.models.encoders import ChurnNet
from churnwatch.pipeline.batch import LengthBucketBatchSampler, SequenceDataset, pad_batch, padded_width
from churnwatch.pipeline.datamodule import ChurnDataModule
from churnwatch.pipeline.device_batches import DeviceSequenceDataset
from tests.helpers import encoded_sequences


def test_pad_batch_places_each_row_left_aligned_with_lengths():
    seqs = encoded_sequences([3, 1, 2])
    batch = pad_batch(seqs, np.array([2, 0, 1]))
    assert batch.cat.shape == (3, 3, 2) and batch.cat.dtype == torch.int64
    assert batch.lengths.tolist() == [2, 3, 1]
    assert batch.cat[0, :, 0].tolist() == [5, 6, 0]  # row 2's events are 5, 6 (1-based ids), then padding
    assert batch.cat[2, :, 0].tolist() == [4, 0, 0]
    last = batch.cat[torch.arange(3), batch.lengths - 1, 0]
    assert last.tolist() == [6, 3, 4]  # the last REAL event of each row
    assert batch.mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert (batch.num[~batch.mask] == 0).all()
    assert batch.tte[0].tolist() == [5, 6, 0] and batch.tte_observed[0].tolist() == [1, 0, 0]
    assert batch.index.tolist() == [2, 0, 1]
    assert batch.aggregates.shape == (3, 0)


def test_dataset_returns_a_batch_for_a_list_of_rows_with_aggregates():
    seqs = encoded_sequences([1, 2])
    ds = SequenceDataset(seqs, aggregates=np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    batch = ds[[1]]
    assert batch.aggregates.tolist() == [[3.0, 4.0]]
    assert batch.label.tolist() == [1.0]


def test_bucket_sampler_covers_every_row_once_and_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    sampler = LengthBucketBatchSampler(lengths, batch_size=32, seed=1, pool_batches=8)
    batches = list(sampler)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert len(batches) == len(sampler)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[rng.permutation(1000)[:32]]) for _ in range(20)])
    assert spread < random_spread / 3
    assert [b for b in LengthBucketBatchSampler(lengths, 32, seed=1, pool_batches=8)] == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch


def test_bucket_sampler_splits_batches_across_ranks():
    lengths = np.arange(1, 101)
    ranks = [list(LengthBucketBatchSampler(lengths, 16, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 7 batches padded to 8, four each
    seen = {i for r in ranks for b in r for i in b}
    assert seen == set(range(100))


def test_unshuffled_sampler_keeps_order_without_bucketing():
    batches = list(LengthBucketBatchSampler(np.ones(5), 2, shuffle=False, bucket=False))
    assert batches == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("multiple", [1, 4])
def test_device_gathered_batches_equal_host_padded_batches(multiple):
    """DeviceSequenceDataset (the GPU path; here on the CPU device) builds the very tensors pad_batch does,
    with widths rounded to a multiple too."""
    seqs = encoded_sequences([4, 1, 7, 2, 5])
    agg = np.random.default_rng(0).normal(size=(len(seqs), 3)).astype(np.float32)
    rows = np.array([3, 0, len(seqs) - 1, 1, 3])
    host = pad_batch(seqs, rows, agg, width_multiple=multiple)
    device = DeviceSequenceDataset(seqs, agg, "cpu", multiple)[rows]
    assert host.cat.shape[1] == (5 if multiple == 1 else 8)  # the longest of these rows has 5 events
    for name in ("cat", "num", "lengths", "static_cat", "static_num", "aggregates", "label", "index", "tte"):
        a, b = getattr(host, name), getattr(device, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name


def _small_net(seqs: EncodedSequences, encoder: str) -> ChurnNet:
    """A small untrained network (seeded) for the codes of `seqs`, in eval mode."""
    torch.manual_seed(0)
    return ChurnNet(
        [int(seqs.cat[:, j].max()) + 2 for j in range(seqs.cat.shape[1])],
        seqs.num.shape[1],
        [0],
        [int(seqs.static_cat[:, j].max()) + 2 for j in range(seqs.static_cat.shape[1])],
        seqs.static_num.shape[1],
        encoder=encoder,
        d_model=16,
        hidden=16,
    ).eval()


def test_rounded_widths_add_only_padding_and_change_no_prediction():
    """`width_multiple` pads each batch out to a multiple (few shapes on a GPU): the extra steps are
    padding, every network predicts the same, and `padded_width` rounds up, never down."""
    assert [padded_width(n, 16) for n in (0, 1, 16, 17, 128)] == [16, 16, 16, 32, 128]
    assert padded_width(5) == 5 and padded_width(0) == 1
    seqs = encoded_sequences([4, 1, 7, 2, 5])
    rows = np.arange(len(seqs))
    plain, rounded = pad_batch(seqs, rows), pad_batch(seqs, rows, width_multiple=16)
    assert plain.cat.shape[1] == 7 and rounded.cat.shape[1] == 16
    torch.testing.assert_close(rounded.cat[:, :7], plain.cat)
    assert (rounded.cat[:, 7:] == 0).all() and (rounded.num[:, 7:] == 0).all()
    assert torch.equal(rounded.lengths, plain.lengths) and torch.equal(rounded.mask[:, :7], plain.mask)
    for encoder in ("lstm", "gru", "transformer"):
        net = _small_net(seqs, encoder)
        with torch.no_grad():
            a, b = (
                net(x.cat, x.num, x.lengths, x.static_cat, x.static_num, x.aggregates)
                for x in (plain, rounded)
            )
        torch.testing.assert_close(a, b, msg=encoder)


def test_int32_codes_are_the_same_codes_and_every_network_reads_them():
    """Scoring pads its batches ahead with int32 codes (half the memory): the same values, and every
    network, scripted as exported, predicts exactly what it does from int64 codes."""
    seqs = encoded_sequences([4, 1, 7, 2, 5])
    rows = np.arange(len(seqs))
    wide, narrow = pad_batch(seqs, rows), pad_batch(seqs, rows, codes=np.int32)
    assert narrow.cat.dtype == narrow.static_cat.dtype == torch.int32
    assert torch.equal(narrow.cat.long(), wide.cat) and torch.equal(narrow.static_cat.long(), wide.static_cat)
    for encoder in ("lstm", "gru", "transformer"):
        scripted = torch.jit.script(_small_net(seqs, encoder))
        with torch.no_grad():
            a, b = (
                scripted(x.cat, x.num, x.lengths, x.static_cat, x.static_num, x.aggregates)
                for x in (wide, narrow)
            )
        assert torch.equal(a, b), encoder


def test_the_datamodule_rounds_widths_as_configured_and_refuses_a_bad_multiple():
    """data.pad_multiple: auto is 1 on CPU (every padded step is computed there), a number rounds the
    batches of the datasets it builds, anything else is one line."""
    seqs = encoded_sequences([4, 1, 7, 2, 5])
    split = SimpleNamespace(seqs=seqs)  # what a dataset is built from, without aggregates
    batch = ChurnDataModule({"pad_multiple": 8})._dataset(split)[np.arange(len(seqs))]
    assert batch.cat.shape[1] == 8 and batch.lengths.max() == 7
    assert ChurnDataModule({})._dataset(split)[np.arange(len(seqs))].cat.shape[1] == 7  # auto, on CPU
    # without a Trainer (a benchmark, a notebook) the datamodule's own device decides what auto means
    assert ChurnDataModule({}, device="cuda")._width_multiple() == 16
    for bad in (0, "16", 2.5, True):
        with pytest.raises(ConfigError, match="data.pad_multiple must be auto or a whole number >= 1"):
            ChurnDataModule({"pad_multiple": bad})._width_multiple()
