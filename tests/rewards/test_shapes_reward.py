import random

import numpy as np
import pytest

from cogrpo.data.prompts import (TASKS, colors, counting, position, sample_records, single_object, two_object)
from cogrpo.data.world import COLOR_INDEX, H, SHAPE_MASKS, W, render, to_rgb
from cogrpo.rewards.shapes import ShapesReward, detect, judge


def canvas(*objects):
    """objects: (color, mask, y, x) painted on white; returns RGB."""
    img = np.zeros((H, W), np.int64)
    for color, mask, y, x in objects:
        h, w = mask.shape
        img[y:y + h, x:x + w][mask] = COLOR_INDEX[color]
    return to_rgb(img)


SQ, CI, TR = SHAPE_MASKS["square"], SHAPE_MASKS["circle"], SHAPE_MASKS["triangle"]


def test_ground_truth_renders_are_judged_correct_every_time():
    rng = random.Random(0)
    records = sample_records(rng, 3000, tasks=TASKS)
    images = to_rgb(np.stack([render(r, rng) for r in records]))
    judgements = ShapesReward().judge_batch(images, records)
    wrong = [(r["prompt"], j.reason) for r, j in zip(records, judgements) if j.strict != 1.0]
    assert not wrong, wrong[:5]
    assert all(j.partial == 1.0 for j in judgements)


def test_empty_and_noise_canvases_score_zero():
    rng = np.random.default_rng(0)
    noise = to_rgb(rng.integers(0, 7, size=(H, W)))
    for image in (to_rgb(np.zeros((H, W), np.int64)), noise):
        assert judge(detect(image), single_object("square")).strict == 0.0


def test_bars_are_not_squares():
    bar = np.ones((2, 6), bool)
    image = canvas(("red", bar, 2, 2), ("red", np.ones((4, 8), bool), 8, 2))
    assert all(o.cls == "other" for o in detect(image))
    assert judge(detect(image), colors("red", "square")).strict == 0.0


def test_speckle_is_not_an_object():
    speckle = np.zeros((6, 6), bool)
    speckle[::2, ::2] = True
    image = canvas(("blue", speckle, 4, 4))
    assert judge(detect(image), single_object("circle")).strict == 0.0
    assert judge(detect(image), single_object("square")).strict == 0.0


def test_merged_blobs_do_not_count_as_two_objects():
    # two squares touching side by side make one 4x8 component: not two squares, not one
    image = canvas(("green", SQ, 4, 2), ("green", SQ, 4, 6))
    assert judge(detect(image), counting(2, "square")).strict == 0.0
    assert judge(detect(image), single_object("square")).strict == 0.0


def test_near_miss_shapes_are_not_counted():
    l_shape = SQ.copy()
    l_shape[:2, 2:] = False  # fill 0.75: a fill-ratio rule would have called it a circle
    holed = CI.copy()
    holed[2:4, 2:4] = False
    image = canvas(("red", l_shape, 2, 2), ("red", holed, 8, 8))
    assert [o.cls for o in detect(image)] == ["other", "other"]


def test_wrong_colour_count_and_relation_fail_with_a_reason():
    image = canvas(("red", CI, 2, 2))
    j = judge(detect(image), colors("blue", "circle"))
    assert j.strict == 0.0 and "blue circle" in j.reason
    image = canvas(("red", SQ, 2, 2), ("red", SQ, 2, 10), ("red", SQ, 10, 2))
    assert judge(detect(image), counting(2, "square")).strict == 0.0  # three is not two (exclude)
    assert judge(detect(image), counting(3, "square")).strict == 1.0
    # blue square left of red circle: true in the first image, false when swapped
    left = canvas(("blue", SQ, 6, 0), ("red", CI, 5, 10))
    right = canvas(("blue", SQ, 6, 12), ("red", CI, 5, 0))
    record = position("square", "left of", "circle", "blue", "red")
    assert judge(detect(left), record).strict == 1.0
    bad = judge(detect(right), record)
    assert bad.strict == 0.0 and bad.partial == pytest.approx(2 / 3) and "left of" in bad.reason


def test_two_object_needs_both_and_partial_counts_constraints():
    image = canvas(("red", CI, 2, 2))
    j = judge(detect(image), two_object("circle", "triangle"))
    assert j.strict == 0.0 and j.partial == 0.5


def test_upscaled_images_are_judged_like_the_originals():
    rng = random.Random(3)
    record = colors("purple", "triangle")
    image = to_rgb(render(record, rng))
    big = np.kron(image, np.ones((4, 4, 1), np.uint8))
    assert judge(detect(big), record).strict == 1.0


def test_reward_interface_returns_scores_and_validity():
    rng = random.Random(4)
    records = [colors("red", "circle"), colors("red", "circle")]
    images = np.stack([to_rgb(render(records[0], rng)), to_rgb(np.zeros((H, W), np.int64))])
    scores, valid = ShapesReward("strict").score(images, [r["prompt"] for r in records], records)
    assert scores.tolist() == [1.0, 0.0] and valid.all()


def test_what_the_judge_cannot_read_is_left_unscored_not_scored_zero():
    """A real model's sample (a free prompt, a COCO class, an image not a multiple of the 16 px world) is invalid,
    so its group leaves it out, where a 0 would read as a wrong image."""
    record = colors("red", "circle")
    image = to_rgb(render(record, random.Random(0)))
    coco = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    cases = [(image, record), (image, {"prompt": "a photo of a red circle"}), (image, coco),
             (np.kron(image, np.ones((2, 2, 1), np.uint8)), record), (image[:12, :12], record)]
    scores, valid = ShapesReward("strict").score(np.array([c[0] for c in cases[:3]]), [], [c[1] for c in cases[:3]])
    assert valid.tolist() == [True, False, False] and scores.tolist() == [1.0, 0.0, 0.0]
    for image_, record_ in cases[3:]:
        assert ShapesReward("strict").score(image_[None], [], [record_])[1].tolist() == [image_.shape[0] == 32]
