"""Pieces of the demo training recipe (exporter/demo): its data split and checkpoint averaging (needs torch)."""

from __future__ import annotations

import pytest

from exporter.demo import grammar


@pytest.mark.parametrize("lang", grammar.LANGUAGES)
def test_validation_sentences_are_unseen_and_apart_from_the_test_set(lang) -> None:
    train = set(grammar.sentences(lang, grammar.DEMO_TRAIN_SENTENCES, grammar.DEMO_SEED))
    test = grammar.demo_heldout(lang)
    valid = grammar.demo_validation(lang)
    assert len(valid) == len(set(valid)) == grammar.DEMO_VALIDATION_SENTENCES
    assert not set(valid) & train
    assert not set(valid) & set(test)
    # the test set is the same whether or not validation sentences are drawn after it
    unseen = grammar.split(lang, grammar.DEMO_TRAIN_SENTENCES, len(test) + len(valid), grammar.DEMO_SEED)[1]
    assert unseen[:len(test)] == test


@pytest.mark.slow
def test_average_into_loads_the_mean_of_float_weights() -> None:
    import torch
    from torch import nn

    from exporter.demo.train import average_into

    model = nn.BatchNorm1d(3)
    snapshots = []
    for k in range(3):
        with torch.no_grad():
            model.weight.fill_(float(k))
            model.running_mean.fill_(2.0 * k)
        model.num_batches_tracked.fill_(10 * k)
        snapshots.append({n: v.clone() for n, v in model.state_dict().items()})
    average_into(model, snapshots)
    assert torch.equal(model.weight.detach(), torch.full((3,), 1.0))  # mean of 0, 1, 2
    assert torch.equal(model.running_mean, torch.full((3,), 2.0))  # mean of 0, 2, 4
    assert int(model.num_batches_tracked) == 20  # an integer buffer is the last snapshot's, not a mean
