"""roi_variants.py and roi_check.py: RoIAlign as each framework computes it, and `check`.

Hand-computed cases on a 5x5 arange map first (one per rule), then torchvision's variants
against roi_ops, the equivalence classes ``describe`` claims as hypothesis properties,
``identify`` on every variant's output, ONNX's published backend vectors, the outputs of
the real runtimes (fixtures written by tests/fixtures/gen_roi_variants.py), the level
mappings, the ``check`` command and bad input.
"""

import pathlib
import re
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymaskrcnn import roi_variants
from tinymaskrcnn.cli import main
from tinymaskrcnn.roi_check import check
from tinymaskrcnn.roi_ops import roi_align, roi_pool

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ONNX = np.load(FIXTURES / "onnx_roialign_vectors.npz")
RUNTIMES = np.load(FIXTURES / "roi_variants_runtimes.npz")

# value = 5 y + x: bilinear interpolation reproduces it exactly inside the map.
ARANGE = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)

# One name per class of numerically identical rules (describe's "same rule as").
CLASSES = {}
for _name in roi_variants.names():
    CLASSES.setdefault(tuple(sorted([_name, *roi_variants.equivalents(_name)])), _name)


def run(name, features, rois, output_size, scale=1.0, ratio=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tensorrt-avg's NaN, on purpose
        return roi_variants.run(name, features, rois, output_size, scale, ratio)


# --- hand-computed answers on the arange map ---------------------------------------

# RoI A = (2, 2)-(6, 6) and RoI B = (1, 1)-(5, 5) at spatial_scale 0.5, one bin, 2x2 samples.
#   x s (legacy):        A starts at 1,    samples 1.5, 2.5;   B at 0.5:  samples 1, 2
#   x s - 0.5 (aligned): A starts at 0.5,  samples 1, 2;       B at 0:    samples 0.5, 1.5
#   (x + 0.5) s - 0.5:   A starts at 0.75, samples 1.25, 2.25; B at 0.25: samples 0.75, 1.75
# avg = 5 ybar + xbar = 6 * mean sample; max of interpolated = 6 * largest sample; the
# weighted-corner max is 0.25 * the largest corner at a sample between four cells and the
# value itself at a sample on a cell centre (weights 1, 0, 0, 0).
ROIS_AB = np.array([[0, 2, 2, 6, 6], [0, 1, 1, 5, 5]], np.float64)
LEGACY = {"avg": [12, 9], "max": [15, 12], "corner": [0.25 * 18, 12]}
ALIGNED = {"avg": [9, 6], "max": [12, 9], "corner": [12, 0.25 * 12]}
OV_HALF_PIXEL = {"avg": [10.5, 7.5], "max": [13.5, 10.5]}
HAND = {
    name: table[reduce]
    for names, table, reduce in [
        (["torchvision", "onnx-10-avg", "onnx-16-output_half_pixel-avg"], LEGACY, "avg"),
        (["openvino-asymmetric-avg", "mmcv-legacy-avg", "caffe2"], LEGACY, "avg"),
        (["onnx-10-max", "onnx-16-output_half_pixel-max"], LEGACY, "corner"),
        (["openvino-asymmetric-max", "mmcv-legacy-max"], LEGACY, "max"),
        (["torchvision-aligned", "onnx-16-avg", "openvino-half_pixel_for_nn-avg"], ALIGNED, "avg"),
        (["mmcv-avg", "tensorrt-avg"], ALIGNED, "avg"),
        (["onnx-16-max", "tensorrt-max"], ALIGNED, "corner"),
        (["openvino-half_pixel_for_nn-max", "mmcv-max"], ALIGNED, "max"),
        (["openvino-half_pixel-avg"], OV_HALF_PIXEL, "avg"),
        (["openvino-half_pixel-max"], OV_HALF_PIXEL, "max"),
    ]
    for name in names
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_each_roialign_rule_gives_its_hand_computed_values(name):
    out = run(name, ARANGE, ROIS_AB, 1, 0.5, 2)
    np.testing.assert_allclose(out[:, 0, 0, 0], HAND[name], rtol=1e-12)


@pytest.mark.parametrize(
    "name, expected",
    [  # on arange - 100 every sample is negative: only OpenVINO's max floors at 0
        ("openvino-asymmetric-max", 0.0),
        ("openvino-half_pixel_for_nn-max", 0.0),
        ("mmcv-legacy-max", 15 - 100),
        ("mmcv-max", 12 - 100),
        # A's legacy samples lie between four cells (weights 0.25 each): the largest term
        # w v is 0.25 times the least negative corner, cell (3, 3) of sample (2.5, 2.5)
        ("onnx-10-max", 0.25 * (18 - 100)),
        # on a cell centre three of the four weights are 0: the max of (v, 0, 0, 0) is 0
        ("onnx-16-max", 0.0),
    ],
)
def test_max_of_negative_samples_follows_each_frameworks_rule(name, expected):
    out = run(name, ARANGE - 100, ROIS_AB[:1], 1, 0.5, 2)
    np.testing.assert_allclose(out[0, 0, 0, 0], expected, rtol=1e-12)


# A zero-width RoI x = 2 under adaptive sampling. Legacy rules stretch it to 1 cell wide
# (1 x 2 samples at x 2.5, y 2.5 and 3.5); aligned ones sample nothing, and each framework
# says something else for an empty grid.
ZERO_WIDTH = np.array([[0, 2, 2, 2, 4]], np.float64)
EMPTY_GRID = {
    "torchvision": 5 * 3 + 2.5,
    "mmcv-legacy-max": 5 * 3.5 + 2.5,
    "onnx-10-max": 0.25 * (5 * 4 + 3),
    "torchvision-aligned": 0.0,
    "onnx-16-avg": 0.0,
    "onnx-16-max": 0.0,
    "openvino-half_pixel_for_nn-max": 0.0,
    "openvino-half_pixel-avg": 0.0,
    "mmcv-max": -10000.0,
    "tensorrt-max": 0.0,
    "tensorrt-avg": np.nan,
}


@pytest.mark.parametrize("name", sorted(EMPTY_GRID))
def test_a_zero_size_roi_gives_each_frameworks_empty_grid_value(name):
    out = run(name, ARANGE, ZERO_WIDTH, 1, 1.0, 0)
    np.testing.assert_equal(out[0, 0, 0, 0], EMPTY_GRID[name])


def test_tensorrt_avg_warns_which_rois_are_nan():
    with pytest.warns(RuntimeWarning, match=r"RoIs \[1\].*0 by 0"):
        roi_variants.run("tensorrt-avg", ARANGE, np.vstack([ROIS_AB[:1], ZERO_WIDTH]), 1)


@pytest.mark.parametrize(
    "name, rois, crop, expected",
    [
        # normalised corners 0.25, 0.75 land on cells 1 and 3 (x (W - 1))
        ("tensorflow-crop_and_resize", [[0, 1, 1, 3, 3]], 2, [[6, 8], [16, 18]]),
        # samples at 0.5 and 2.5: bilinear 5 y + x ...
        ("tensorflow-crop_and_resize", [[0, 0.5, 0.5, 2.5, 2.5]], 2, [[3, 5], [13, 15]]),
        # ... nearest rounds halves away from zero (roundf): cells 1 and 3, not 0 and 2
        ("tensorflow-crop_and_resize-nearest", [[0, 0.5, 0.5, 2.5, 2.5]], 2, [[6, 8], [16, 18]]),
        # one sample per axis: the box centre, 0.5 (0.125 + 0.625) 4 = 1.5
        ("tensorflow-crop_and_resize", [[0, 0.5, 0.5, 2.5, 2.5]], 1, [[9]]),
        # samples at x -1 and 1, y 0 and 2: outside [0, W - 1] is extrapolation_value 0
        ("tensorflow-crop_and_resize", [[0, -1, 0, 1, 2]], 2, [[0, 1], [0, 11]]),
        # torchvision rounds 1.4 and 2.4 to cells 1..2; mmcv keeps 1.4 .. 3.4: cells 1..3
        ("torchvision-roi_pool", [[0, 1.4, 1.4, 2.4, 2.4]], 1, [[12]]),
        ("mmcv-roi_pool", [[0, 1.4, 1.4, 2.4, 2.4]], 1, [[18]]),
        ("mmcv-roi_pool", [[0, 0, 0, 3, 3]], 2, [[6, 8], [16, 18]]),
        ("mmcv-roi_pool", [[0, 3, 3, 1, 1]], 1, [[0]]),  # negative size: skipped, 0
    ],
)
def test_crop_and_resize_and_roi_pool_give_their_hand_computed_values(name, rois, crop, expected):
    np.testing.assert_allclose(run(name, ARANGE, rois, crop)[0, 0], expected, rtol=1e-6)


# --- torchvision's variants are roi_ops, exactly -----------------------------------


@st.composite
def cases(draw, max_k=5):
    """features (N, C, H, W), rois (K, 5) past every border / tiny / degenerate, etc."""
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, c, h, w)).astype(np.float32)
    k = draw(st.integers(1, max_k))
    corners = rng.uniform(-2, np.array([w, h, w, h]) / scale + 2, (k, 4))
    tiny = rng.random(k) < 0.3  # tiny and zero-size RoIs
    corners[tiny, 2:] = corners[tiny, :2] + rng.choice([0.0, 0.01, 0.3], (tiny.sum(), 2))
    rois = np.concatenate([rng.integers(0, n, (k, 1)), corners], axis=1)
    output_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return features, rois, output_size, scale, draw(st.integers(0, 3))


@given(cases())
def test_torchvision_variants_equal_roi_ops_exactly(case):
    features, rois, output_size, scale, ratio = case
    for name, aligned in (("torchvision", False), ("torchvision-aligned", True)):
        expected = roi_align(features, rois, output_size, scale, ratio, aligned)
        np.testing.assert_array_equal(
            run(name, features, rois, output_size, scale, ratio), expected
        )
    expected = roi_pool(features, rois, output_size, scale)[0]
    np.testing.assert_array_equal(
        run("torchvision-roi_pool", features, rois, output_size, scale), expected
    )


@given(cases())
def test_names_describe_calls_the_same_rule_give_the_same_numbers(case):
    features, rois, output_size, scale, ratio = case
    for members in CLASSES:
        outs = [run(name, features, rois, output_size, scale, ratio) for name in members]
        for name, out in zip(members[1:], outs[1:], strict=True):
            np.testing.assert_array_equal(out, outs[0], err_msg=f"{members[0]} vs {name}")


# A rich case where every class of rules differs from every other: RoIs past the borders,
# sub-cell and zero-size ones, large ones with adaptive grids of several samples.
RICH_RNG = np.random.default_rng(7)
RICH_FEATURES = RICH_RNG.standard_normal((2, 3, 9, 11)).astype(np.float32)
RICH_ROIS = np.array(
    [
        [0, 1.3, 2.1, 17.9, 13.2],
        [1, -3.0, -2.2, 9.7, 8.8],
        [0, 14.1, 10.3, 25.0, 21.7],
        [1, 4.2, 4.4, 5.0, 5.1],
        [0, 6.0, 3.0, 6.0, 9.0],
        [1, 0.0, 0.0, 22.0, 18.0],
        [0, 2.2, 8.0, 3.1, 17.6],
    ]
)
RICH = (RICH_FEATURES, RICH_ROIS, (3, 4), 0.5)


def test_every_class_of_rules_differs_from_every_other_on_a_rich_case():
    outs = {name: run(name, *RICH, 0) for name in CLASSES.values()}
    for a in outs:
        for b in outs:
            if a < b:
                assert not np.allclose(outs[a], outs[b], atol=1e-3, equal_nan=True), (a, b)


@pytest.mark.parametrize("name", roi_variants.names())
@pytest.mark.parametrize("ratio", [0, 2])
def test_identify_names_the_variant_that_made_an_output_first(name, ratio):
    output = run(name, *RICH, ratio)
    finite = np.isfinite(output).all(axis=(1, 2, 3))  # tensorrt-avg's NaN RoI cannot be given
    case = (RICH_FEATURES, RICH_ROIS[finite], (3, 4), 0.5)
    matches = roi_variants.identify(*case[:2], output[finite], *case[2:])
    rank = [m.name for m in matches].index(name)
    assert matches[rank].fraction_close == 1.0 and matches[rank].max_abs_error == 0.0
    # Ahead of it only its documented equivalents, or (on this input) identical numbers:
    # with a fixed sampling ratio no grid is empty, so tensorrt-avg is torchvision-aligned.
    for m in matches[:rank]:
        same = run(m.name, *case, m.sampling_ratio or 0)
        assert m.name in roi_variants.equivalents(name) or np.array_equal(same, output[finite])
    if ratio == 0 and finite.all():  # on adaptive grids every class differs
        assert matches[0].name in {name, *roi_variants.equivalents(name)}


@pytest.mark.parametrize("name", list(CLASSES.values()))
def test_a_perturbed_output_matches_no_variant(name):
    output = run(name, *RICH, 2)
    output = np.nan_to_num(output) + 0.01 * np.random.default_rng(0).standard_normal(output.shape)
    matches = roi_variants.identify(RICH_FEATURES, RICH_ROIS, output, (3, 4), 0.5)
    assert all(m.fraction_close < 1.0 for m in matches)
    assert len(matches) == len(roi_variants.names())


def test_describe_names_the_source_file_version_and_equivalents():
    text = roi_variants.describe("onnx-16-max")
    assert "onnx 1.22.0" in text and "op_roi_align.py" in text
    assert "tensorrt-max" in text and "w1 v1" in text
    assert "No other name" in roi_variants.describe("openvino-half_pixel-avg")
    for name in roi_variants.names():
        assert name in roi_variants.describe(name)


# --- ONNX's published backend test vectors -----------------------------------------


@pytest.mark.parametrize(
    "test, name, atol",
    [  # the avg vectors are printed to 4 decimals; the max one to float32
        ("test_roialign_aligned_false", "onnx-16-output_half_pixel-avg", 1e-4),
        ("test_roialign_aligned_true", "onnx-16-avg", 1e-4),
        ("test_roialign_mode_max", "onnx-16-output_half_pixel-max", 2e-6),
    ],
)
def test_onnx_backend_vectors_are_reproduced(test, name, atol):
    x, rois, batch = (ONNX[f"{test}/{key}"] for key in ("X", "rois", "batch_indices"))
    rois = np.concatenate([batch[:, None], rois], axis=1)
    np.testing.assert_allclose(run(name, x, rois, 5, 1.0, 2), ONNX[f"{test}/Y"], atol=atol)
    assert "roialign.py" in str(ONNX["source"])


# --- the real runtimes (onnxruntime, the onnx reference, OpenVINO, TensorFlow) --------

RUNTIME_KEYS = [key for key in RUNTIMES.files if key.count("/") == 2]


def _runtime_case(key):
    case = key.split("/")[0]
    ph, pw, scale, ratio = RUNTIMES[f"{case}/setup"]
    return (
        RUNTIMES[f"{case}/features"],
        RUNTIMES[f"{case}/rois"],
        (int(ph), int(pw)),
        scale,
        int(ratio),
    )


@pytest.mark.parametrize("key", RUNTIME_KEYS)
def test_each_variant_reproduces_its_runtime_to_float32_rounding(key):
    features, rois, output_size, scale, ratio = _runtime_case(key)
    runtime, name = key.split("/")[1:]
    if runtime == "openvino-onnx-import-no-sampling_ratio":
        ratio = 1  # OpenVINO's importer default, where ONNX says 0
    ours, theirs = run(name, features, rois, output_size, scale, ratio), RUNTIMES[key]
    # OpenVINO's CPU plugin gives NaN (0 * 1 / 0) for an empty adaptive grid, where its
    # reference gives the 0 this module does: that is the only NaN allowed.
    nan_rois = np.flatnonzero(np.isnan(theirs).any(axis=(1, 2, 3)))
    if len(nan_rois):
        assert runtime == "openvino" and name.endswith("-avg") and ratio == 0
        width, height = (rois[nan_rois, 3:] - rois[nan_rois, 1:3]).T
        assert ((width == 0) | (height == 0)).all()
        np.testing.assert_array_equal(ours[nan_rois], 0.0)
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], atol=2e-5, rtol=0)


def test_identify_reports_openvinos_importer_default_as_sampling_ratio_1():
    key = "case0/openvino-onnx-import-no-sampling_ratio/onnx-16-avg"
    features, rois, output_size, scale, _ = _runtime_case(key)
    best = roi_variants.identify(features, rois, RUNTIMES[key], output_size, scale)[0]
    assert best.sampling_ratio == 1 and best.fraction_close == 1.0
    assert best.name in {"onnx-16-avg", *roi_variants.equivalents("onnx-16-avg")}


# --- FPN level mapping -------------------------------------------------------------


def square(side, corner=10.0):
    return np.array([[corner, corner, corner + side, corner + side]], np.float32)


@pytest.mark.parametrize(
    "name, side, level",
    [
        ("torchvision", 224, 4),
        ("torchvision", 223, 3),
        ("torchvision", 112, 3),  # log2(1/2) = -1 exactly, + 1e-6 keeps it at 3
        ("torchvision", 111, 2),
        ("torchvision", 4000, 5),  # clamped to k_max
        ("detectron2", 224, 4),
        ("detectron2", 111, 2),
        ("mmdet", 55, 2),
        ("mmdet", 112, 3),  # k_min + floor(log2(2 + 1e-6))
        ("mmdet", 447, 4),
        # matterport rounds (and shrinks by the 1 of norm_boxes): side 160 reads P4 where
        # floor(4 + log2(160 / 224)) = floor(3.51) = 3 sends torchvision to P3
        ("matterport", 160, 4),
        ("torchvision", 160, 3),
        ("matterport", 150, 3),
        ("matterport", 0, 2),  # degenerate: k_min
    ],
)
def test_each_level_mapping_gives_its_level(name, side, level):
    assert roi_variants.levels(name, square(side), (1024, 1024)).tolist() == [level]


def test_level_mapping_names_are_the_four_frameworks():
    assert roi_variants.level_mapping_names() == [
        "torchvision",
        "detectron2",
        "mmdet",
        "matterport",
    ]
    with pytest.raises(ValueError, match="did you mean detectron2"):
        roi_variants.levels("detectron", square(50), (100, 100))


# --- the check command ---------------------------------------------------------------


def write_case(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def onnx_max_case(tmp_path, **changes):
    test = "test_roialign_mode_max"
    arrays = dict(
        X=ONNX[f"{test}/X"], rois=ONNX[f"{test}/rois"], batch_indices=ONNX[f"{test}/batch_indices"],
        Y=ONNX[f"{test}/Y"], sampling_ratio=2,
    )  # fmt: skip
    arrays.update(changes)
    return write_case(tmp_path / "case.npz", **{k: v for k, v in arrays.items() if v is not None})


def test_check_names_the_matching_variant_and_exits_0(tmp_path, capsys):
    assert main(["check", onnx_max_case(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "matches: onnx-10-max (= onnx-16-output_half_pixel-max) with sampling_ratio 2" in out
    assert out.count("%") == len(roi_variants.names())  # the ranked table: every variant


def test_check_reads_a_tensorflow_file_without_conversion_by_hand(tmp_path, capsys):
    key = "case2/tensorflow/tensorflow-crop_and_resize"
    features, rois, _, scale, _ = _runtime_case(key)
    h, w = features.shape[2:]
    boxes = np.stack([rois[:, 2] * scale / (h - 1), rois[:, 1] * scale / (w - 1),
                      rois[:, 4] * scale / (h - 1), rois[:, 3] * scale / (w - 1)], 1)  # fmt: skip
    path = write_case(
        tmp_path / "tf.npz",
        image=features.transpose(0, 2, 3, 1),
        boxes=boxes.astype(np.float32),
        box_indices=rois[:, 0].astype(np.int32),
        crops=RUNTIMES[key].transpose(0, 2, 3, 1),
    )
    assert check(path, layout="nhwc", boxes="normalized-yxyx") == 0
    assert "matches: tensorflow-crop_and_resize" in capsys.readouterr().out


def test_check_reports_a_sampling_ratio_other_than_the_files(tmp_path, capsys):
    key = "case0/openvino-onnx-import-no-sampling_ratio/onnx-16-avg"
    features, rois, _, scale, _ = _runtime_case(key)
    path = write_case(tmp_path / "ov.npz", features=features, rois=rois, output=RUNTIMES[key],
                      spatial_scale=scale, sampling_ratio=0)  # fmt: skip
    assert check(path) == 0
    out = capsys.readouterr().out
    assert "with sampling_ratio 1" in out and "OpenVINO's ONNX importer uses 1" in out


def test_check_on_a_mismatching_output_says_where_and_exits_1(tmp_path, capsys):
    y = ONNX["test_roialign_mode_max/Y"].copy()
    y[1, 0, 2, 3] += 0.05
    png = tmp_path / "gap.png"
    assert main(["check", onnx_max_case(tmp_path, Y=y), "--save-figure", str(png)]) == 1
    out = capsys.readouterr().out
    assert "no variant matches; closest onnx-10-max" in out
    assert "1 of 75 outputs depart, in 1 of 3 RoIs [1]" in out and "bin (2, 3)" in out
    assert "likely cause: no known rule explains" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_names_the_rule_difference_behind_a_departure(tmp_path, capsys):
    # torchvision's legacy rule everywhere but on RoI 1, which comes from the aligned rule.
    output = run("torchvision", *RICH, 2)
    output[1] = run("torchvision-aligned", *RICH, 2)[1]
    path = write_case(tmp_path / "mixed.npz", features=RICH_FEATURES, rois=RICH_ROIS,
                      output=output, spatial_scale=0.5, sampling_ratio=2)  # fmt: skip
    assert check(path) == 1
    out = capsys.readouterr().out
    assert "in 1 of 7 RoIs [1]" in out
    assert "likely cause: the half-pixel shift; the minimum RoI size of 1 cell" in out


def test_check_spots_boxes_given_as_y_x(tmp_path, capsys):
    output = run("onnx-16-avg", *RICH, 0)
    swapped = RICH_ROIS[:, [0, 2, 1, 4, 3]]
    path = write_case(tmp_path / "yx.npz", features=RICH_FEATURES, rois=swapped, output=output,
                      spatial_scale=0.5)  # fmt: skip
    assert check(path) == 1
    assert "input slip: the boxes look like [y1, x1, y2, x2]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(Y=None), "no 'output' array"),
        (dict(rois=np.zeros((3, 3))), r"rois must be \(K, 5\)"),
        (
            dict(batch_indices=np.array([0, 0, 1])),
            r"rois\[:, 0\] must be batch indices in \[0, 1\)",
        ),
        (dict(Y=np.zeros((3, 2, 5, 5))), r"= \(3, 1, 5, 5\) for 3 RoIs, 1 channels .* got \(3, 2"),
        (dict(Y=np.zeros((2, 1, 5, 5))), r"= \(3, 1, 5, 5\) for 3 RoIs.* got \(2, 1, 5, 5\)"),
        (dict(X=np.full((1, 1, 10, 10), np.nan)), "features must be finite"),
        (dict(Y=np.full((3, 1, 5, 5), np.nan)), "output has NaN in RoIs .*TensorRT"),
        (dict(spatial_scale=-1.0), "spatial_scale must be a positive number"),
    ],
)
def test_check_on_malformed_files_exits_2_saying_what_is_wrong(tmp_path, capsys, changes, message):
    assert check(onnx_max_case(tmp_path, **changes)) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinymaskrcnn check: ")
    assert re.search(message, err), err


def test_check_on_a_file_that_is_no_npz_exits_2(tmp_path, capsys):
    path = tmp_path / "notes.npz"
    path.write_text("not an archive")
    assert check(str(path)) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    for option in ("--layout", "--boxes", "--save-figure", "nhwc", "normalized-yxyx"):
        assert option in out


# --- bad input to the library ------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: roi_variants.run("onnx16-max", ARANGE, ROIS_AB, 1), "did you mean onnx-16-max"),
        (lambda: roi_variants.describe("mmcv_avg"), "did you mean mmcv-avg"),
        (
            lambda: roi_variants.run("torchvision", ARANGE, ROIS_AB[:, 1:], 1),
            r"rois must be \(K, 5\)",
        ),
        (lambda: roi_variants.run("torchvision", ARANGE, [[1, 0, 0, 1, 1]], 1), r"\[0, 1\).*has 1"),
        (lambda: roi_variants.run("torchvision", ARANGE[0], ROIS_AB, 1), r"\(N, C, H, W\)"),
        (
            lambda: roi_variants.run("torchvision", ARANGE * np.nan, ROIS_AB, 1),
            "features must be finite",
        ),
        (lambda: roi_variants.run("torchvision", ARANGE, ROIS_AB, 0), "output_size must be"),
        (
            lambda: roi_variants.identify(ARANGE, ROIS_AB, np.zeros((2, 1, 2, 2)), 1),
            r"output must be \(K, C, ph, pw\) = \(2, 1, 1, 1\)",
        ),
        (
            lambda: roi_variants.identify(ARANGE, ROIS_AB, np.full((2, 1, 1, 1), np.nan), 1),
            "output must be finite",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
