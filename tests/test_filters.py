"""Learn2PD filters and features: estimator conventions, properties, persistence without pickle."""

import json
from fractions import Fraction

import numpy as np
import pytest
import skops.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from unmask.core.plugins import registry
from unmask.filters import GBDTFilter, MLPFilter, TrainedFilter, block_stats, features, load_filter, save_filter
from unmask.contrib.train.filters import filter_metrics


def synthetic(seed: int, records: int = 48, width: int = 8):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(records, width, 10, generator=generator) * 3
    masked = torch.rand(records, width, generator=generator) < 0.7
    stats = block_stats(logits, masked, torch.randint(width, (records,), generator=generator), eos_token_id=0)
    labels = (stats.confidence > 0.6) | ~masked  # committed positions are final
    return stats, labels


FILTERS = {"mlp": lambda: MLPFilter(max_iter=60), "gbdt": lambda: GBDTFilter(max_iter=15)}
FEATURES = {"mlp": "block_confidence", "gbdt": "position_stats"}


@pytest.mark.parametrize("kind", FILTERS)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**16))
def test_probabilities_are_deterministic_per_position_and_in_range(kind, seed):
    stats, labels = synthetic(seed)
    X = features(FEATURES[kind], stats)
    first = FILTERS[kind]().fit(X, labels, sample_mask=stats.masked).predict_proba(X)
    second = FILTERS[kind]().fit(X, labels, sample_mask=stats.masked).predict_proba(X)
    assert first.shape == labels.shape
    assert ((first >= 0) & (first <= 1)).all()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("kind", FILTERS)
def test_follow_scikit_learn_estimator_conventions(kind):
    estimator = FILTERS[kind]()
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params() and copy is not estimator
    copy.set_params(random_state=3)
    assert copy.random_state == 3 and estimator.random_state == 0
    assert not any(name.endswith("_") for name in vars(copy))  # nothing learned before fit


@pytest.mark.parametrize("kind", FILTERS)
def test_save_load_round_trip_gives_identical_predictions(kind, tmp_path):
    stats, labels = synthetic(1)
    X = features(FEATURES[kind], stats)
    estimator = FILTERS[kind]().fit(X, labels, sample_mask=stats.masked)
    width = getattr(estimator, "width_", None)
    save_filter(TrainedFilter(estimator=estimator, features=FEATURES[kind], block_length=width), tmp_path / kind)
    loaded = load_filter(tmp_path / kind)
    assert (loaded.features, loaded.block_length) == (FEATURES[kind], width)
    assert sorted(p.name for p in (tmp_path / kind).iterdir() if not p.name.startswith("."))[0] == "filter.json"
    np.testing.assert_array_equal(loaded.estimator.predict_proba(X), estimator.predict_proba(X))
    assert not list(tmp_path.glob(".*"))  # no staging directory left behind


def test_header_mismatch_is_a_clear_error(tmp_path):
    stats, labels = synthetic(2)
    estimator = GBDTFilter(max_iter=5).fit(features("position_stats", stats), labels)
    save_filter(TrainedFilter(estimator=estimator, features="position_stats", block_length=None), tmp_path / "f")
    header = json.loads((tmp_path / "f" / "filter.json").read_text())
    header["features"] = "block_confidence"
    (tmp_path / "f" / "filter.json").write_text(json.dumps(header))
    load_filter.cache_clear()
    with pytest.raises(ValueError, match="trained on 11 features per position.*'block_confidence' now gives 1"):
        load_filter(tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="not a saved filter"):
        load_filter(tmp_path)


def test_skops_files_with_foreign_types_are_refused(tmp_path):
    (tmp_path / "f").mkdir()
    skops.io.dump({"model": Fraction(1, 3)}, tmp_path / "f" / "model.skops")
    with pytest.raises(ValueError, match="fractions.Fraction"):
        GBDTFilter().load_weights(tmp_path / "f", {"n_features": 11})


def test_mlp_refuses_another_block_width():
    stats, labels = synthetic(3, width=8)
    estimator = MLPFilter(max_iter=5).fit(features("block_confidence", stats), labels)
    other, _ = synthetic(3, width=4)
    with pytest.raises(ValueError, match=r"\(N, 8, 1\) features"):
        estimator.predict_proba(features("block_confidence", other))


def test_bad_training_input_names_the_rule():
    with pytest.raises(ValueError, match="X must be a 3-D array"):
        MLPFilter().fit(np.zeros((4, 8)), np.zeros((4, 8)))
    with pytest.raises(ValueError, match="y must have shape"):
        GBDTFilter().fit(np.zeros((4, 8, 2)), np.zeros((4, 7)))
    with pytest.raises(ValueError, match="single class"):
        GBDTFilter().fit(np.zeros((4, 8, 2)), np.ones((4, 8)))


def test_feature_sets_are_registered_and_shaped():
    assert {"block_confidence", "position_stats", "position_conflicts"} <= set(registry().names("features"))
    assert {"mlp", "gbdt"} <= set(registry().names("filters"))
    stats, _ = synthetic(4, records=5, width=6)
    rich = features("position_stats", stats)
    assert rich.shape == (5, 6, 11)
    torch.testing.assert_close(rich[:, 1:, 3], stats.confidence[:, :-1])  # left neighbour's confidence
    assert (rich[:, 0, 3] == 1).all()  # the block edge counts as certain
    torch.testing.assert_close(features("block_confidence", stats)[..., 0], stats.confidence)


def test_metrics_count_masked_positions_only():
    probability = np.array([[0.99, 0.2], [0.97, 0.99]])
    labels = np.array([[True, False], [False, True]])
    masked = np.array([[True, True], [True, False]])
    metrics = filter_metrics(probability, labels, masked, tau=0.96)
    assert metrics["positions"] == 3
    assert metrics["precision@0.96"] == 0.5 and metrics["recall@0.96"] == 1.0


def test_stats_of_a_block_cut_by_eotp_count_the_cut_positions_as_final_eos():
    from unmask.core.types import StepView
    from unmask.filters.features import view_stats

    x = torch.full((1, 10), 5)
    x[0, 2:5] = 1  # the block is columns 2..9; EoTP left 3 of them on the canvas
    view = StepView(x=x, x0=x, confidence=torch.zeros(1, 10), masked=x == 1, window=torch.ones(1, 10, dtype=torch.bool),
                    row_active=torch.ones(1, dtype=torch.bool), schedule_k=torch.ones(1, dtype=torch.long),
                    nfe=torch.ones(1, dtype=torch.long), logits=torch.randn(1, 3, 7), block_start=2, block_end=10,
                    gen_start=2, mask_token_id=1, eos_token_id=0)
    stats = view_stats(view)
    assert stats.width == 8
    assert (stats.confidence[0, 3:] == 1).all() and stats.eos[0, 3:].all() and not stats.masked[0, 3:].any()
    assert (stats.confidence[0, :3] < 1).all()


def test_conflict_features_count_repeats_and_who_outranks_whom():
    logits = torch.full((1, 4, 5), -5.0)
    for position, (token, value) in enumerate([(1, 5.0), (1, 3.0), (2, 4.0), (1, 6.0)]):
        logits[0, position, token] = value
    masked = torch.tensor([[True, True, True, False]])
    # The committed last position holds token 3, so only the two masked 1s compete; the surer one wins.
    stats = block_stats(logits, masked, 0, eos_token_id=0, tokens=torch.tensor([[0, 0, 0, 3]]))
    assert stats.tokens.tolist() == [[1, 1, 2, 3]]
    conflicts = features("position_conflicts", stats)[0, :, -2:]
    assert conflicts.tolist() == [[1, 0], [1, 1], [0, 0], [0, 0]]
    # Had it committed token 1, it would outrank both masked 1s.
    stats = block_stats(logits, masked, 0, eos_token_id=0, tokens=torch.tensor([[0, 0, 0, 1]]))
    assert features("position_conflicts", stats)[0, :, -2:].tolist() == [[2, 1], [2, 1], [0, 0], [2, 0]]


def test_gbdt_scores_only_the_positions_asked_for():
    stats, labels = synthetic(3)
    X = features("position_stats", stats)
    estimator = GBDTFilter(max_iter=10).fit(X, labels, sample_mask=stats.masked)
    everywhere, masked = estimator.predict_proba(X), estimator.predict_proba(X, sample_mask=stats.masked)
    np.testing.assert_array_equal(masked[stats.masked.numpy()], everywhere[stats.masked.numpy()])
    assert (masked[~stats.masked.numpy()] == 0).all()


@settings(max_examples=25)
@given(seed=st.integers(0, 2**16), vocab=st.integers(2, 6))
def test_in_every_group_of_equal_tokens_exactly_one_position_is_not_outranked(seed, vocab):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 8, vocab, generator=generator)
    masked = torch.rand(6, 8, generator=generator) < 0.7
    committed = torch.randint(vocab, (6, 8), generator=generator)
    stats = block_stats(logits, masked, 0, eos_token_id=0, tokens=committed)
    conflicts = features("position_conflicts", stats)
    assert conflicts.shape == (6, 8, 13)
    for row in range(6):
        for token in stats.tokens[row].unique():
            group = stats.tokens[row] == token
            assert (conflicts[row, group, -2] == group.sum() - 1).all()
            assert (conflicts[row, group, -1] == 0).sum() == 1
