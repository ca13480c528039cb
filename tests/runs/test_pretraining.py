"""Self-supervised pretraining (CoLES): the objective, its inputs (nothing at or after the cutoff, no
labels), and a pretrained encoder reused across runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from churnwatch.models.coles import SliceViews, contrastive_loss
from tests.helpers import (
    LEAKAGE_TEST_CUTOFF,
    encoded_sequences,
    leakage_cfg,
    make_events,
    tamper_from,
    train_tiny,
)


def test_slice_views_are_contiguous_slices_of_their_own_row():
    seqs = encoded_sequences([10, 1, 6])
    batch = SliceViews(seqs, views=3, min_share=0.3, max_share=0.9, seed=0)[[0, 1, 2]]
    assert batch.index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i, row in enumerate(batch.index.tolist()):
        n = int(batch.lengths[i])
        ids = batch.cat[i, :n, 0].tolist()  # encoded_sequences numbers its events 1, 2, ... in order
        lo, hi = int(seqs.offsets[row]) + 1, int(seqs.offsets[row + 1])
        assert ids == list(range(ids[0], ids[0] + n)) and lo <= ids[0] and ids[-1] <= hi
        assert 1 <= n <= max(1, round(0.9 * (hi - lo + 1)))


def test_contrastive_loss_is_low_when_views_of_a_row_agree():
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    anchors = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
    matched = anchors[owner]
    shuffled = anchors[torch.tensor([0, 1, 2, 0, 1, 2])]
    assert contrastive_loss(matched, owner, 0.1) < contrastive_loss(shuffled, owner, 0.1) - 1.0


def test_pretraining_reads_nothing_at_or_after_its_cutoff(tmp_path):
    from churnwatch.pipeline.build import build_data
    from churnwatch.runs.pretrain import pretraining_cutoff, pretraining_sequences

    events = make_events(n_customers=60, seed=8)
    built = []
    for name, frame in (("clean", events), ("tampered", tamper_from(events, LEAKAGE_TEST_CUTOFF))):
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path)
        data = build_data(leakage_cfg(path))
        assert str(pretraining_cutoff(data).date()) == LEAKAGE_TEST_CUTOFF
        built.append(pretraining_sequences(data))
    clean, tampered = built
    assert np.isnan(clean.label).all()  # unlabelled
    assert np.array_equal(clean.offsets, tampered.offsets) and np.array_equal(clean.cat, tampered.cat)
    assert np.array_equal(clean.num, tampered.num) and len(clean) > 50  # test customers included


@pytest.mark.slow
def test_pretrained_encoder_is_reused_and_fine_tuning_starts_from_it(tmp_path):
    """A frozen fine-tune keeps the pretrained layers bit for bit (so it started from them); a run with
    another seed reuses the same pretrained file instead of pretraining again."""
    pre = ["pretrain=coles", "pretrain.max_epochs=1", "model.tte.weight=0.5", f"paths.cache_dir={tmp_path}"]
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data").symlink_to(tmp_path / "a" / "data")  # the same events
    first = train_tiny(tmp_path / "a", *pre, "pretrain.freeze=true")
    path = first["pretrained_encoder"]
    saved = torch.load(path, weights_only=True)["state"]
    assert len(saved) > 4 and all(k.startswith(("events.", "sequence.", "pool.")) for k in saved)
    ckpt = torch.load(first["best_checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(ckpt[f"net.{k}"], v) for k, v in saved.items())
    second = train_tiny(tmp_path / "b", *pre, "seed=7")
    assert second["pretrained_encoder"] == path
    tuned = torch.load(second["best_checkpoint"], weights_only=True)["state_dict"]
    assert not all(torch.equal(tuned[f"net.{k}"], v) for k, v in saved.items())  # not frozen: it moved


def test_pretrained_embeddings_follow_their_tokens_into_another_vocabulary():
    from churnwatch.models.coles import load_pretrained, pretrained_state
    from churnwatch.models.encoders import ChurnNet

    torch.manual_seed(0)
    source, target = (ChurnNet([5, 8, 25], 2, [0, 1], [], 0, d_model=8, hidden=8) for _ in range(2))
    fresh = target.events.embeddings[0].weight.detach().clone()
    theirs, mine = ["<pad>", "<oov>", "a", "b", "c"], ["<pad>", "<oov>", "c", "a", "d"]
    load_pretrained(target, pretrained_state(source), vocabs=[(theirs, mine)])
    got, src = target.events.embeddings[0].weight, source.events.embeddings[0].weight
    assert torch.equal(got[2], src[4]) and torch.equal(got[3], src[2])  # c and a, wherever they were
    assert torch.equal(got[4], fresh[4])  # d: never pretrained
    assert torch.equal(target.events.embeddings[1].weight, source.events.embeddings[1].weight)
