"""Metrics: top-k with ties, Wilson intervals against the formula, crop and ensemble averaging."""

import math

import numpy as np
import pytest
import torch

from alexrepro.errors import UserError
from alexrepro.evaluation.metrics import (
    ErrorCounts,
    average_crops,
    average_ensemble,
    softmax,
    topk_classes,
    wilson_interval,
)
from alexrepro.topk import true_class_rank


def test_topk_on_constructed_scores():
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.01, 0.005, 0.005],  # label 0: rank 0
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # label 0: rank 5, outside the top 5
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # label 1: rank 4, inside the top 5
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 2: rank 2
        ]
    )
    labels = torch.tensor([0, 0, 1, 2])
    assert true_class_rank(scores, labels).tolist() == [0, 5, 4, 2]
    counts = ErrorCounts(num_classes=6)
    counts.update(scores, labels)
    assert counts.error(1) == pytest.approx(3 / 4)  # only the first image's label is ranked first
    assert counts.error(5) == pytest.approx(1 / 4)  # only the second image's label is outside the top 5


def test_ties_count_against_the_true_class():
    # A constant output must not score: every tied class is counted as ranked above the label.
    flat = ErrorCounts(num_classes=6)
    flat.update(torch.zeros(3, 6), torch.tensor([0, 3, 5]))
    assert flat.error(1) == 1.0 and flat.error(5) == 1.0
    # Tied for first with one other class: not top-1, but top-2.
    tied = ErrorCounts(num_classes=4, ks=(1, 2))
    tied.update(torch.tensor([[0.4, 0.4, 0.1, 0.1]]), torch.tensor([1]))
    assert tied.error(1) == 1.0 and tied.error(2) == 0.0
    # Tied below: the other classes score equal to each other, the label alone on top is still top-1.
    alone = ErrorCounts(num_classes=4, ks=(1,))
    alone.update(torch.tensor([[0.7, 0.1, 0.1, 0.1]]), torch.tensor([0]))
    assert alone.error(1) == 0.0


def test_k_larger_than_classes_is_a_user_error():
    with pytest.raises(UserError, match="top-5 error needs at least 5 classes but the scores have 3"):
        ErrorCounts(num_classes=3)
    with pytest.raises(UserError):
        ErrorCounts(num_classes=4)  # top-5 is part of the report


def test_wilson_interval_matches_the_formula():
    z = 1.959963984540054
    for errors, n in [(0, 10), (3, 10), (10, 10), (375, 1000), (17000, 100000), (1, 1)]:
        p = errors / n
        center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = (z / (1 + z**2 / n)) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        lo, hi = wilson_interval(errors, n)
        assert lo == pytest.approx(max(0.0, center - half), abs=1e-12)
        assert hi == pytest.approx(min(1.0, center + half), abs=1e-12)
        assert lo <= p <= hi
    # A textbook value: 0 of 10 gives [0, 0.2775].
    assert wilson_interval(0, 10)[1] == pytest.approx(0.27753, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


def test_crop_average_is_the_mean_of_softmaxes_over_crops():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, 7, generator=g)  # 4 images, 10 crops, 7 classes
    probs = softmax(logits)
    avg = average_crops(probs)
    for i in range(4):
        acc = torch.zeros(7)
        for c in range(10):
            acc += torch.exp(logits[i, c]) / torch.exp(logits[i, c]).sum()
        torch.testing.assert_close(avg[i], acc / 10)


def test_ensemble_averages_probabilities_not_logits():
    a = torch.tensor([[10.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 2.9]])
    pa, pb = softmax(a), softmax(b)
    ens = average_ensemble([pa, pb])
    torch.testing.assert_close(ens, (pa + pb) / 2)
    # Averaging logits would give a different distribution (and here a different top-1).
    by_logits = softmax((a + b) / 2)
    assert not torch.allclose(ens, by_logits)
    assert ens.argmax().item() == 0 and by_logits.argmax().item() == 0
    c = torch.tensor([[0.0, 8.0, 0.0]])
    d = torch.tensor([[4.0, 0.0, 4.0]])
    # softmax average: class 1 has ≈ 0.5; logit average: classes 0..2 tie-ish, class 1 wins at 4 vs 2
    ens2 = average_ensemble([softmax(c), softmax(d)])
    assert ens2[0, 1] == pytest.approx((math.exp(8) / (math.exp(8) + 2)) / 2 + 1 / (2 * math.exp(4) + 1) / 2)
    with pytest.raises(ValueError):
        average_ensemble([softmax(a), softmax(torch.zeros(1, 4))])


def test_error_counts_per_class_and_merge():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 1, 1])
    counts = ErrorCounts(num_classes=2, ks=(1,))
    counts.update(scores[:2], labels[:2])
    other = ErrorCounts(num_classes=2, ks=(1,))
    other.update(scores[2:], labels[2:])
    counts.add_array(other.as_array())
    assert counts.total == 4
    assert counts.images.tolist() == [2, 2]
    assert counts.misses[1].tolist() == [1, 1]
    assert counts.error(1) == pytest.approx(0.5)
    np.testing.assert_allclose(counts.class_error(1), [0.5, 0.5])
    assert counts.interval(1) == wilson_interval(2, 4)


def test_topk_classes_sorted_and_capped():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    vals, idx = topk_classes(scores, 5)
    assert idx.shape == (1, 4) and idx[0, 0].item() == 1
    assert vals[0].tolist() == sorted(vals[0].tolist(), reverse=True)


def test_training_counts_top1_and_top5_and_top5_shrinks_below_five_classes():
    from alexrepro.topk import TOP_KS, topk_for

    assert TOP_KS == (1, 5)  # §6
    assert topk_for(1000) == (1, 5) and topk_for(5) == (1, 5) and topk_for(3) == (1, 3) and topk_for(1) == (1, 1)


def test_k_up_to_the_class_count_is_defined_and_above_it_is_a_user_error():
    assert ErrorCounts(num_classes=5).total == 0  # top-5 of five classes: defined (always right)
    with pytest.raises(UserError, match="^top-5 error needs at least 5 classes but the scores have 4; evaluate on "
                                        "a set with more classes or report a smaller k$"):
        ErrorCounts(num_classes=4)
    with pytest.raises(UserError, match="top-0 error"):
        ErrorCounts(num_classes=4, ks=(0,))


def test_labels_of_any_integer_type_rank_alike():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    for labels in ([2, 2], np.array([2, 2], dtype=np.int32), torch.tensor([2, 2], dtype=torch.int32),
                   np.array([2, 2], dtype=np.int16), torch.tensor([2, 2], dtype=torch.uint8)):
        assert true_class_rank(scores, labels).tolist() == [1, 2]
        counts = ErrorCounts(num_classes=3, ks=(1, 2))
        counts.update(scores, labels)
        assert counts.images.tolist() == [0, 0, 2] and counts.misses[2].tolist() == [0, 0, 1]


def test_empty_counts_and_classes_without_images_are_nan():
    counts = ErrorCounts(num_classes=3, ks=(1,))
    assert math.isnan(counts.error(1))
    # class 0: one image, missed; class 1: no image; class 2: three images, one missed
    counts.update(torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.0, 0.1, 0.9], [0.0, 0.9, 0.1]]),
                  torch.tensor([0, 2, 2, 2]))
    got = counts.class_error(1)
    assert got[0] == 1.0 and math.isnan(got[1]) and got[2] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="^scores have 4 classes, the counts 3$"):
        counts.update(torch.zeros(1, 4), torch.tensor([0]))


def test_merged_tallies_keep_each_k_apart():
    scores = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]] * 2)
    labels = torch.tensor([0, 0, 0, 1])  # ranks 0, 5, 0, 4
    a, b = ErrorCounts(num_classes=6), ErrorCounts(num_classes=6)
    a.update(scores[:2], labels[:2])
    b.update(scores[2:], labels[2:])
    a.add_array(b.as_array())
    assert a.images.tolist() == [3, 1, 0, 0, 0, 0]
    assert a.misses[1].tolist() == [1, 1, 0, 0, 0, 0] and a.misses[5].tolist() == [1, 0, 0, 0, 0, 0]
    assert a.interval(1, z=1.0) == wilson_interval(2, 4, 1.0) != wilson_interval(2, 4)


def test_wilson_interval_ends_are_exact_and_bad_counts_are_refused():
    for n in (1, 3, 7, 10, 1000, 123457):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    with pytest.raises(ValueError, match="^a confidence interval needs at least one image$"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"^errors must lie in \[0, n\], got 11 of 10$"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="^an ensemble needs at least one member$"):
        average_ensemble([])
    with pytest.raises(ValueError, match=r"^ensemble members disagree on shape: \[\(1, 3\), \(1, 4\)\]$"):
        average_ensemble([torch.zeros(1, 3), torch.zeros(1, 4)])


def test_softmax_is_the_formula_in_float32_or_wider():
    logits = torch.tensor([[1.0, 2.0, 0.5], [-3.0, 0.0, 3.0]], dtype=torch.float64)
    e = np.exp(logits.numpy() - logits.numpy().max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    got = softmax(logits)
    assert got.dtype == torch.float64  # float64 logits stay float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-15)
    for half in (torch.bfloat16, torch.float16):  # half precision is widened to float32 first
        got = softmax(logits.to(half))
        assert got.dtype == torch.float32
        h = logits.to(half).double().numpy()
        e = np.exp(h - h.max(axis=1, keepdims=True))
        np.testing.assert_allclose(got.numpy(), e / e.sum(axis=1, keepdims=True), rtol=1e-6)


def test_topk_classes_work_along_the_last_dimension_of_any_shape():
    scores = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 3, 7)))  # images × views × classes
    values, indices = topk_classes(scores, 5)
    want = np.argsort(-scores.numpy(), axis=-1)[..., :5]
    assert indices.shape == (2, 3, 5)
    np.testing.assert_array_equal(indices.numpy(), want)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores.numpy(), want, -1))
    assert topk_classes(scores, 9)[1].shape == (2, 3, 7)  # capped at the 7 classes, not the 3 views


def test_crop_averaging_names_the_shape_it_cannot_take():
    with pytest.raises(ValueError, match=r"^expected \(N, crops, K\) probabilities, got shape \(2, 3\)$"):
        average_crops(torch.zeros(2, 3))
