"""synth's classes are shape, texture and layout families: colour says nothing about the class."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alexrepro.data.synth import TRAIN_STRIDE, draw_image
from alexrepro.data.synth_images import (
    DISTINCT_FAMILIES,
    GREYSCALE_P,
    LAYOUTS,
    LUMA,
    MIN_CONTRAST,
    SHAPES,
    TEXTURES,
    class_family,
    colour_pair,
    hsv_rgb,
    unit_area,
)

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SIZES = 10, 30, 20, (48, 80)


def hue_histogram(img: np.ndarray, bins: int = 36) -> np.ndarray:
    """Histogram of the HSV hue (written out) of the saturated pixels, normalised."""
    x = img.reshape(-1, 3).astype(np.float64) / 255
    mx, mn = x.max(axis=1), x.min(axis=1)
    d = np.maximum(mx - mn, 1e-9)
    r, g, b = x.T
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    saturated = (mx - mn) / np.maximum(mx, 1e-9) > 0.3
    h = np.bincount((hue * bins).astype(int) % bins, weights=saturated, minlength=bins)
    return h / max(h.sum(), 1.0)


def rgb_histogram(img: np.ndarray, bins: int = 4) -> np.ndarray:
    """Joint RGB histogram, bins³ cells, normalised."""
    q = img.reshape(-1, 3).astype(np.int64) * bins // 256
    h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins ** 3).astype(np.float64)
    return h / h.sum()


def colour_only_accuracies(train: list[tuple[np.ndarray, int]], val: list[tuple[np.ndarray, int]]) -> dict[str, float]:
    """Val accuracy of nearest centroid and of logistic regression on hue and on RGB histograms, fitted on train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y_train = np.array([c for _, c in train])
    y_val = np.array([c for _, c in val])
    scores = {}
    for name, feature in (("hue", hue_histogram), ("rgb", rgb_histogram)):
        x_train = np.array([feature(im) for im, _ in train])
        x_val = np.array([feature(im) for im, _ in val])
        centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in range(CLASSES)])
        nearest = np.argmin(((x_val[:, None] - centroids[None]) ** 2).sum(axis=-1), axis=1)
        scores[f"{name} nearest centroid"] = float(np.mean(nearest == y_val))
        scaler = StandardScaler().fit(x_train)
        logreg = LogisticRegression(max_iter=3000).fit(scaler.transform(x_train), y_train)
        scores[f"{name} logistic regression"] = float(logreg.score(scaler.transform(x_val), y_val))
    return scores


@pytest.fixture(scope="module")
def drawn() -> tuple[list[tuple[np.ndarray, int]], list[tuple[np.ndarray, int]]]:
    """Train and val images of 10 classes as synth draws them (small sides, to stay fast)."""
    train = [(draw_image(0, "train", c * TRAIN_STRIDE + i, c, *SIZES)[0], c)
             for c in range(CLASSES) for i in range(1, TRAIN_PER_CLASS + 1)]
    val_labels = np.random.default_rng(5).permutation(np.repeat(np.arange(CLASSES), VAL_PER_CLASS))
    val = [(draw_image(0, "val", k + 1, int(c), *SIZES)[0], int(c)) for k, c in enumerate(val_labels)]
    return train, val


def test_colour_alone_stays_within_twice_chance(drawn):
    train, val = drawn
    scores = colour_only_accuracies(train, val)
    chance = 1 / CLASSES
    assert all(acc <= 2 * chance for acc in scores.values()), scores


def test_the_colour_classifiers_would_see_a_colour_cue(drawn):
    # Guard for the test above: tint every image towards a hue of its class (a quarter of the way)
    # and the same classifiers find the classes. A colour leak of that size would not go unnoticed.
    def tinted(items):
        return [(np.clip(0.75 * im + 0.25 * hsv_rgb(c / CLASSES, 1.0, 1.0), 0, 255).astype(np.uint8), c)
                for im, c in items]

    train, val = drawn
    scores = colour_only_accuracies(tinted(train), tinted(val))
    assert max(scores.values()) >= 0.6, scores


def test_classes_are_families_of_shape_texture_and_layout_without_colour():
    families = [class_family(c) for c in range(DISTINCT_FAMILIES)]
    assert len(set(families)) == DISTINCT_FAMILIES == 40 * len(LAYOUTS)  # lcm(8 shapes, 10 textures) = 40
    assert len({(f.shape, f.texture) for f in families[:40]}) == 40 and {f.layout for f in families[:40]} == {"single"}
    assert len({f.texture for f in families[:10]}) == 10 == len(TEXTURES)  # the default 10 classes: 10 textures
    assert len({f.shape for f in families[:10]}) == len(SHAPES)
    assert class_family(DISTINCT_FAMILIES + 3) == class_family(3)  # beyond 120 classes the families repeat
    assert class_family(1).description() == "striped square"
    assert class_family(41).description() == "pair of striped squares"
    for f in families:  # no colour word anywhere: the class never chooses a colour
        assert not set(f.description().split()) & {"red", "green", "blue", "yellow", "orange", "violet", "cyan"}


def test_shapes_are_scaled_to_equal_areas():
    # Each shape's area at radius 1, written out: disc π; square of half-side 0.8; triangle and hexagon
    # with circumradius 1 (area 3√3/4 and 3√3/2); ring between radii 0.55 and 1.
    expected = {"disc": math.pi, "square": 4 * 0.8 ** 2, "triangle": 3 * math.sqrt(3) / 4,
                "hexagon": 3 * math.sqrt(3) / 2, "ring": math.pi * (1 - 0.55 ** 2)}
    for shape, area in expected.items():
        assert unit_area(shape) == pytest.approx(area, rel=0.01), shape
    assert all(0.4 < unit_area(s) < math.pi * 1.01 for s in SHAPES)


def test_object_colours_stay_visible_in_grey_and_are_exchangeable():
    rng = np.random.default_rng(0)
    firsts, seconds = [], []
    for _ in range(2000):
        ground = float(rng.uniform(0, 255))
        a, b = colour_pair(rng, ground)
        la, lb = float(a @ LUMA), float(b @ LUMA)
        assert abs(la - lb) >= MIN_CONTRAST - 0.01  # the texture shows in grey
        assert abs(la - ground) >= MIN_CONTRAST - 0.01 and abs(lb - ground) >= MIN_CONTRAST - 0.01  # so does the object
        assert a.min() >= 0 and b.max() <= 255 + 1e-3
        firsts.append(la)
        seconds.append(lb)
    # Fill and texture colour come from one distribution: a plain object and a 30%-dotted one have the
    # same colour statistics on average (means and spreads agree within sampling error, sd/sqrt(2000) ≈ 1.5).
    assert abs(np.mean(firsts) - np.mean(seconds)) < 5 and abs(np.std(firsts) - np.std(seconds)) < 5


def test_a_fifth_are_greyscale_whatever_the_class():
    grey = np.zeros(4)
    n = 150
    for c in range(4):
        for i in range(1, n + 1):
            img = draw_image(1, "train", c * TRAIN_STRIDE + i, c, 32, 40)[0].astype(np.int16)
            grey[c] += np.all(img[..., 0] == img[..., 1]) and np.all(img[..., 1] == img[..., 2])
    frac = grey / n
    assert np.all(np.abs(frac - GREYSCALE_P) < 0.1), frac  # binomial sd at n = 150 is 0.033
