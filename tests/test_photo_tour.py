"""The photo tour's pieces: stand-in ground truth and which anchor grids it draws."""

import numpy as np

from tinymaskrcnn.photo_tour import grid_levels, stand_in_target


def _arrays(scores, boxes, proposals=((10.0, 10.0, 30.0, 20.0),)):
    """Recorded arrays of one 40 x 60 image resized to 80 x 120."""
    d = len(scores)
    masks = np.zeros((d, 1, 40, 60), np.float32)
    if d:
        masks[0, 0, 5:15, 5:25] = 0.9
    detections = {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "labels": np.arange(1, d + 1, dtype=np.int64),
        "masks": masks,
    }
    return {
        "masks": {"detections": [detections]},
        "transform": {"original_sizes": [(40, 60)], "image_sizes": [(80, 120)]},
        "proposals": {"boxes": [np.asarray(proposals, np.float32)]},
    }


def test_confident_detections_stand_in_for_ground_truth_with_their_masks():
    boxes = [[5, 5, 25, 15], [30, 10, 50, 30], [1, 1, 4, 4]]
    target, what = stand_in_target(_arrays([0.9, 0.6, 0.2], boxes))
    np.testing.assert_array_equal(target["boxes"], np.float32(boxes[:2]))
    np.testing.assert_array_equal(target["labels"], [1, 2])
    assert target["masks"].shape == (2, 40, 60) and target["masks"].dtype == np.uint8
    assert target["masks"][0].sum() == 200  # the mask cut at 0.5
    assert target["masks"][1, 10:30, 30:50].all() and target["masks"][1].sum() == 400  # its box
    assert "2 detections" in what


def test_without_a_confident_detection_the_best_one_stands_in():
    target, what = stand_in_target(_arrays([0.3, 0.1], [[5, 5, 25, 15], [30, 10, 50, 30]]))
    np.testing.assert_array_equal(target["labels"], [1])
    assert "best detection" in what


def test_without_any_detection_the_best_proposal_stands_in_in_the_original_frame():
    target, what = stand_in_target(_arrays([], []))
    np.testing.assert_allclose(target["boxes"], [[5, 5, 15, 10]])  # half the resized frame
    assert target["masks"][0, 5:10, 5:15].all() and "proposal" in what


def test_the_grids_drawn_are_the_two_finest_with_few_locations():
    # 128 x 128 (the shapes model): P3 16x16 and P4 8x8, as the shapes tour draws.
    assert grid_levels([3 * 32 * 32, 3 * 16 * 16, 3 * 64, 3 * 16, 3 * 4], 3) == (1, 2)
    # 800 x 1216: P3 is 100 x 152 = 15,200 locations, P4 3,800; P5 and P6 are drawn.
    sides = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    assert grid_levels([3 * h * w for h, w in sides], 3) == (3, 4)
