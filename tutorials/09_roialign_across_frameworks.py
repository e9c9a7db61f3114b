# %% [markdown]
# # Tutorial 09 — RoIAlign across frameworks: one operator, fifteen sets of numbers.
#
# Export a Mask R-CNN from torchvision to ONNX, run it in onnxruntime, OpenVINO or
# TensorRT, port it to mmcv or TensorFlow, and the RoI features change. Every framework
# implements the same idea (Mask R-CNN §3: cut the RoI into bins, sample each bin on a
# regular grid by bilinear interpolation, reduce), but each makes a handful of choices of its
# own: where the half-pixel shift goes (x s, x s - 0.5 or (x + 0.5) s - 0.5), whether a RoI
# is stretched to at least one cell, what "max" means (ONNX's reference takes the max of the
# four *weighted* corner terms w_i v_i of each sample, mmcv and OpenVINO the max of the
# interpolated values, OpenVINO floored at 0), and what an empty sampling grid gives (0,
# -10000, or 0 / 0 = NaN). ``tinymaskrcnn.roi_variants`` keeps each framework as one row
# of those parameters, fed to one shared sampler; 25 names collapse to 15 distinct rules.
#
# Steps:
#   1. one RoI on one map, read by each rule: sample points (RoIAlign, crop_and_resize)
#      and bins (RoIPool), small multiples;
#   2. the table of pairwise max differences between the 15 rules on one random case;
#   3. the weighted-corner max against the max of interpolated samples, on one bin and
#      over many;
#   4. the four FPN level mappings on a sweep of box sizes: floor against round;
#   5. ``identify`` (and ``tinymaskrcnn check``) telling which rule produced an output.
#
# Coordinates: RoIs are x1, y1, x2, y2 in input-image pixels; the figures draw the feature
# map in cell-index units (cell (i, j) centred on x = j, y = i).
#
# Run: ``python tutorials/09_roialign_across_frameworks.py`` (writes figures/09_*.png).


# %%
import pathlib
import warnings

import numpy as np

from tinymaskrcnn import roi_variants
from tinymaskrcnn.plotting import roi_variants as plots
from tinymaskrcnn.roi_ops import bilinear_neighbours

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
rng = np.random.default_rng(9)

# One name per class of numerically identical rules, in table order.
CLASSES = {}
for name in roi_variants.names():
    key = tuple(sorted([name, *roi_variants.equivalents(name)]))
    CLASSES.setdefault(key, name)
REPRESENTATIVES = list(CLASSES.values())


# %%
def run(name, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tensorrt-avg's NaN, on purpose
        return roi_variants.run(name, *args)


# --- 1. where each rule reads one RoI --------------------------------------------------

fmap = rng.random((8, 8))
roi = np.array([0, 3.3, 2.7, 11.1, 9.9])  # input pixels; spatial_scale 0.5 halves them
scale, output_size, ratio = 0.5, (2, 2), 2
panels = [
    ("x s (legacy)", "torchvision", "torchvision, onnx-10, onnx-16 output_half_pixel,\n"
     "openvino asymmetric, mmcv legacy, caffe2"),
    ("x s - 0.5 (aligned)", "torchvision-aligned", "torchvision aligned, onnx-16 half_pixel,\n"
     "openvino half_pixel_for_nn, mmcv, tensorrt"),
    ("(x + 0.5) s - 0.5", "openvino-half_pixel-avg", "openvino half_pixel"),
    ("crop_and_resize", "tensorflow-crop_and_resize", "tensorflow bilinear (matterport):\n"
     "corner to corner, no bins"),
    ("crop_and_resize nearest", "tensorflow-crop_and_resize-nearest", "tensorflow nearest:\n"
     "rings = the cell each sample takes"),
    ("RoIPool, rounded", "torchvision-roi_pool", "torchvision roi_pool: corners rounded,\n"
     "bins floor/ceil"),
    ("RoIPool, float corners", "mmcv-roi_pool", "mmcv roi_pool: x1 s .. (x2 + 1) s,\n"
     "bins floor/ceil"),
]  # fmt: skip
print("1. one RoI", roi[1:].tolist(), f"at spatial_scale {scale}, {output_size} bins:")
for title, name, _ in panels:
    out = run(name, fmap[None, None], roi[None], output_size, scale, ratio)[0, 0]
    print(f"   {title:26s} {name:36s} bins {np.round(out, 3).ravel().tolist()}")
fig = plots.sampling_panels(fmap, roi, output_size, scale, ratio, panels)
print("   wrote", plots.save(fig, FIGURES / "09_sampling.png"))

# --- 2. pairwise differences on one shared random case ----------------------------------

features = rng.standard_normal((2, 4, 16, 20)).astype(np.float32)
corners = np.sort(rng.uniform(-8, 48, (40, 2, 2)), axis=1).transpose(0, 2, 1).reshape(40, 4)
corners[:4, 2:] = corners[:4, :2] + [[0, 1.5], [0.3, 0.2], [4, 0], [0.01, 0.01]]  # tiny ones
rois = np.concatenate([rng.integers(0, 2, (40, 1)), corners], axis=1)
case = (features, rois, (7, 7), 0.5, 0)
outs = {name: run(name, *case) for name in REPRESENTATIVES}


# %%
def gap(a, b):
    """max |a - b|, inf where one gives NaN and the other a number."""
    if (np.isnan(a) != np.isnan(b)).any():
        return np.inf
    return np.nanmax(np.abs(a - b))


gaps = np.array([[gap(outs[a], outs[b]) for b in REPRESENTATIVES] for a in REPRESENTATIVES])
print("\n2. max |difference| between rules, 40 RoIs (some past the borders, some tiny), 7x7:")
onnx_max, mmcv_max = REPRESENTATIVES.index("onnx-16-max"), REPRESENTATIVES.index("mmcv-max")
print(f"   torchvision vs torchvision-aligned {gaps[0, 1]:.3f}; ONNX max vs mmcv max "
      f"{gaps[onnx_max, mmcv_max]:.3f} (an empty grid: 0 against -10000)")  # fmt: skip
fig = plots.difference_table(REPRESENTATIVES, gaps)
print("   wrote", plots.save(fig, FIGURES / "09_differences.png"))

# --- 3. what "max" means ----------------------------------------------------------------

bin_roi = np.array([[0, 2.3, 2.6, 4.7, 5.0]])  # one bin, aligned: samples between cells
(points,) = roi_variants.sample_points("onnx-16-max", bin_roi, 1, (16, 20), 1.0, 2)
index, weight = bilinear_neighbours(points, 16, 20)
channel = features[0, 0].ravel()
terms = (channel[index] * weight).reshape(-1, 4)  # (4 samples, 4 corners): w_i v_i
interpolated = terms.sum(-1)
reductions = {
    f"{label}\n({name})": float(run(name, features[:1, :1], bin_roi, 1, 1.0, 2)[0, 0, 0, 0])
    for label, name in [
        ("mean of v", "onnx-16-avg"),
        ("max over samples of largest w·v", "onnx-16-max"),
        ("max of v", "mmcv-max"),
        ("max(0, max of v)", "openvino-half_pixel_for_nn-max"),
    ]
}
print("\n3. one bin, 4 samples: interpolated", np.round(interpolated, 3).tolist())
print("   largest weighted corner per sample", np.round(terms.max(-1), 3).tolist())
for label, value in reductions.items():
    print(f"   {label.replace(chr(10), ' '):64s} {value:+.4f}")
inside = np.concatenate([rois[:, :1], np.sort(rng.uniform(0, 32, (40, 2, 2)), axis=1)
                         .transpose(0, 2, 1).reshape(40, 4)], axis=1)  # fmt: skip
many = [run(name, features, inside, 7, 0.5, 2) for name in ("onnx-16-max", "mmcv-max")]
many = np.abs(many[0] - many[1]).ravel()
fig = plots.corner_max(
    features[0, 0, 1:5, 1:5], (1, 1), points.reshape(-1, 2), interpolated, terms, reductions, many
)
print(f"   over {many.size} bins: median gap {np.median(many):.3f}, largest {many.max():.3f}")
print("   wrote", plots.save(fig, FIGURES / "09_max_semantics.png"))

# --- 4. which pyramid level a box reads -------------------------------------------------

image_size = (1024, 1024)
sides = np.geomspace(16, 1024, 600)
boxes = np.stack([np.full_like(sides, 10), np.full_like(sides, 10), 10 + sides, 10 + sides], 1)
by_rule = {
    rule: roi_variants.levels(rule, boxes.astype(np.float32), image_size)
    for rule in roi_variants.level_mapping_names()
}
print("\n4. FPN level of a square box (image 1024 x 1024):")
for rule, level in by_rule.items():
    steps = [f"P{level[0]}"] + [
        f"{sides[i]:.0f}px: P{level[i]}" for i in range(1, len(level)) if level[i] != level[i - 1]
    ]
    print(f"   {rule:12s} {', '.join(steps)}")
disagree = sides[by_rule["torchvision"] != by_rule["matterport"]]
first_run = disagree[disagree < 224]
print(f"   torchvision (floor) and matterport (round) disagree on {disagree.size} of "
      f"{sides.size} sizes, e.g. {first_run.min():.0f}-{first_run.max():.0f} px")  # fmt: skip
fig = plots.level_sweep(sides, by_rule, image_size)
print("   wrote", plots.save(fig, FIGURES / "09_levels.png"))

# --- 5. identify: which rule made this output? -------------------------------------------

secret = run("openvino-half_pixel_for_nn-avg", *case[:4], 1)  # OpenVINO's importer: ratio 1
matches = roi_variants.identify(*case[:2], secret, *case[2:4])
print("\n5. identify on an output OpenVINO would give (ONNX RoiAlign-16, no sampling_ratio):")
for m in matches[:5]:
    print(f"   {m.name:36s} sampling {m.sampling_ratio}  max |error| {m.max_abs_error:.2e}"
          f"  {100 * m.fraction_close:5.1f}% within tolerance")  # fmt: skip
print(
    "   the same from the command line: np.savez('case.npz', features=..., rois=..., "
    "output=...); tinymaskrcnn check case.npz"
)
