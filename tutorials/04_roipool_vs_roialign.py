# %% [markdown]
# # Tutorial 04 — RoIPool vs RoIAlign: where every sample lies, and why it matters.
#
# The box head and the mask head need a fixed-size feature tensor for every proposal,
# whatever its size. Faster R-CNN's RoIPool gets it by rounding twice: the proposal is
# rounded to whole feature cells, then cut into ph x pw bins whose borders are rounded
# again, and each bin keeps its maximum. With a stride of 16 the first rounding alone
# moves a box edge by up to 8 image pixels — harmless for "is this a cat?", ruinous for
# a 28 x 28 mask that must line up with the object's outline (Mask R-CNN §3).
#
# RoIAlign (Mask R-CNN) keeps every fraction. Each bin gets a regular grid of sample
# points (2 x 2 here: "interpolate to 14 x 14, then pool to 7 x 7"); each point reads
# the four feature cells around it by bilinear interpolation, and the bin averages its
# samples (the study notes take the max instead: ``reduction="max"``).
#
# Steps:
#   1. the 8x8 feature map and the RoIPool 2x2 example: unequal, even overlapping bins;
#   2. RoIAlign's 2x2 bins, 4 samples each, every sample's four neighbours;
#   3. aligned=False (torchvision's legacy default) vs aligned=True: a half-pixel shift;
#   4. adaptive sampling (sampling_ratio <= 0) on a large RoI;
#   5. TensorFlow's crop_and_resize, which matterport's Mask R-CNN uses, for comparison;
#   6. RoIPool's quantisation error as a RoI slides by sub-pixel steps.
#
# Coordinates: RoIs are x1, y1, x2, y2 in image pixels, where pixel (i, j) covers
# [j, j+1) x [i, i+1). The figures draw the feature map in cell-index units (cell (i, j)
# centred on x=j, y=i), the frame in which RoIAlign computes its samples.
#
# Run: ``python tutorials/04_roipool_vs_roialign.py`` (writes figures/04_*.png).


# %%
import pathlib

import matplotlib
import numpy as np

from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.roi_ops import (
    plot_adaptive_sampling,
    plot_aligned_vs_legacy,
    plot_crop_and_resize_vs_roi_align,
    plot_quantisation_sweep,
    plot_roi_align_samples,
    plot_roi_pool,
)
from tinymaskrcnn.roi_ops import (
    bilinear_neighbours,
    crop_and_resize,
    crop_and_resize_points,
    roi_align,
    roi_align_sampling_points,
    roi_pool,
    roi_pool_bins,
)

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"

# The 8x8 feature map of the study notes' example (one channel, values in [0, 1]).
FMAP = np.array(
    [
        [0.88, 0.44, 0.14, 0.16, 0.37, 0.77, 0.96, 0.27],
        [0.19, 0.45, 0.57, 0.16, 0.63, 0.29, 0.71, 0.70],
        [0.66, 0.26, 0.82, 0.64, 0.54, 0.73, 0.59, 0.26],
        [0.85, 0.34, 0.76, 0.84, 0.29, 0.75, 0.62, 0.25],
        [0.32, 0.74, 0.21, 0.39, 0.34, 0.03, 0.33, 0.48],
        [0.20, 0.14, 0.16, 0.13, 0.73, 0.65, 0.96, 0.32],
        [0.19, 0.69, 0.09, 0.86, 0.88, 0.07, 0.01, 0.48],
        [0.83, 0.24, 0.97, 0.04, 0.24, 0.35, 0.50, 0.91],
    ]
)
FEATURES = FMAP[None, None]  # (N=1, C=1, 8, 8)
# A RoI on this map (spatial_scale 1) whose sides, 6.1 x 3.8, do not split in two evenly.
ROI = np.array([[0, 0.3, 3.4, 6.4, 7.2]])


# %%
def step1_roipool():
    out, argmax = roi_pool(FEATURES, ROI, 2)
    bins = [b[0].tolist() for b in roi_pool_bins(ROI, (2, 2), 1.0, 8, 8)]
    h_start, h_end, w_start, w_end = bins
    print("1. RoIPool 2x2 of RoI", ROI[0, 1:].tolist())
    print(
        f"   rounded RoI: columns {w_start[0]}..{w_end[-1] - 1}, rows {h_start[0]}..{h_end[-1] - 1}"
    )
    rows = [f"{a}..{b - 1}" for a, b in zip(h_start, h_end, strict=True)]
    cols = [f"{a}..{b - 1}" for a, b in zip(w_start, w_end, strict=True)]
    print(f"   bins: rows {rows} x columns {cols} (row 5 and column 3 are shared)")
    print(f"   output (max per bin):\n{out[0, 0]}")
    fig = plot_roi_pool(FMAP, ROI[0, 1:], bins, out[0, 0], argmax[0, 0])
    print("   ->", save(fig, FIGURES / "04_roipool.png"))


# %%
def step2_roialign():
    (points,) = roi_align_sampling_points(ROI, 2, sampling_ratio=2, aligned=True)
    index, weight = bilinear_neighbours(points, 8, 8)
    avg = roi_align(FEATURES, ROI, 2, sampling_ratio=2, aligned=True)[0, 0]
    peak = roi_align(FEATURES, ROI, 2, sampling_ratio=2, aligned=True, reduction="max")[0, 0]
    print("2. RoIAlign 2x2, sampling_ratio 2, aligned=True")
    print(f"   bin (0, 0) samples (x, y): {points[0, 0].reshape(-1, 2).round(3).tolist()}")
    print(f"   their bilinear weights sum to {weight[0, 0].sum(-1).ravel().tolist()}")
    print(f"   output (mean of 4):\n{avg.round(4)}\n   output (max of 4):\n{peak.round(4)}")
    roi_box = ROI[0, 1:] - 0.5  # pixel frame -> cell-index frame
    fig = plot_roi_align_samples(FMAP, roi_box, points, index, weight, avg, peak)
    print("   ->", save(fig, FIGURES / "04_roialign.png"))


# %%
def step3_aligned():
    legacy, aligned = (
        roi_align_sampling_points(ROI, 2, sampling_ratio=2, aligned=a)[0] for a in (False, True)
    )
    centre = (ROI[0, 1:3] + ROI[0, 3:]) / 2 - 0.5  # RoI centre, cell-index frame
    print("3. aligned=False vs aligned=True")
    for name, points in (("False", legacy), ("True ", aligned)):
        offset = (points.reshape(-1, 2).mean(axis=0) - centre).round(3) + 0.0  # no -0.0
        print(f"   aligned={name}: samples' centre is off the RoI's by {offset.tolist()}")
    fig = plot_aligned_vs_legacy(FMAP, ROI[0, 1:], legacy, aligned)
    print("   ->", save(fig, FIGURES / "04_aligned.png"))


# %%
def step4_adaptive():
    roi = np.array([[0, 1.3, 2.2, 21.7, 13.4]])
    (points,) = roi_align_sampling_points(roi, 3, sampling_ratio=-1, aligned=True)
    size = roi[0, 3:] - roi[0, 1:3]
    gh, gw = points.shape[2:4]
    print("4. adaptive sampling: RoI", size.round(2).tolist(), "cells (w, h) into 3x3 bins")
    print(
        f"   ceil({size[1]:.1f} / 3) = {gh} rows and ceil({size[0]:.1f} / 3) = {gw} columns "
        f"of samples per bin, {gh * gw * 9} samples in all"
    )
    title = f"sampling_ratio=-1: {gh}x{gw} samples per bin (about one per cell)"
    fig = plot_adaptive_sampling((16, 24), roi[0, 1:] - 0.5, points, title)
    print("   ->", save(fig, FIGURES / "04_adaptive_sampling.png"))


# %%
def step5_crop_and_resize():
    # TF normalises a box so that 0 and 1 are the first and last cell *centres*.
    corners = (ROI[0, 1:] - 0.5) / 7.0
    tf_rois = np.concatenate([[0.0], corners])[None]
    tf_points = crop_and_resize_points(tf_rois[:, 1:], (4, 4), 8, 8)[0]
    (align_points,) = roi_align_sampling_points(ROI, 2, sampling_ratio=2, aligned=True)
    crop = crop_and_resize(FEATURES, tf_rois, 4)[0, 0]
    print("5. crop_and_resize to 4x4 samples the box's own corners (no bins):")
    print(f"   x of its samples: {tf_points[0, :, 0].round(3).tolist()}")
    print(f"   RoIAlign's x:     {np.unique(align_points[..., 0]).round(3).tolist()}")
    print("   crop (its first column lies left of the first cell centre: extrapolated 0):")
    print(crop.round(3))
    fig = plot_crop_and_resize_vs_roi_align((8, 8), ROI[0, 1:] - 0.5, tf_points, align_points)
    print("   ->", save(fig, FIGURES / "04_crop_and_resize.png"))


# %%
def step6_quantisation():
    stride = 16
    # A ramp whose value is the image-pixel x of each cell centre: the interpolated map
    # is then x itself, so every bin's exact mean and max are known in closed form.
    ramp = np.broadcast_to((np.arange(40) + 0.5) * stride, (16, 40))[None, None].copy()
    shift = np.arange(0, 48.05, 0.1)
    rois = np.stack(
        [
            np.zeros_like(shift),
            64 + shift,
            np.full_like(shift, 40.0),
            64 + shift + 150,
            np.full_like(shift, 180.0),
        ],
        axis=1,
    )
    pooled, _ = roi_pool(ramp, rois, 2, 1 / stride)
    aligned = roi_align(ramp, rois, 2, 1 / stride, sampling_ratio=2, aligned=True)
    left = rois[:, 1]
    bin_right = left + (rois[:, 3] - left) / 2
    # RoIPool's max is the centre of the last cell it reads; the exact max is the bin's
    # right edge. RoIAlign's mean is exact: the bin's centre.
    pool_error = pooled[:, 0, 0, 0] - bin_right
    align_error = aligned[:, 0, 0, 0] - (left + bin_right) / 2
    edge_error = np.sign(left / stride) * np.floor(np.abs(left / stride) + 0.5) * stride - left
    print(f"6. a 150-px RoI sliding by 0.1 px at stride {stride}:")
    print(f"   RoIPool's left edge error: {edge_error.min():+.1f} .. {edge_error.max():+.1f} px")
    print(f"   RoIPool's bin (0,0) error: {pool_error.min():+.1f} .. {pool_error.max():+.1f} px")
    print(f"   RoIAlign's bin (0,0) error: {np.abs(align_error).max():.2e} px")
    fig = plot_quantisation_sweep(shift, edge_error, pool_error, align_error, stride)
    print("   ->", save(fig, FIGURES / "04_quantisation.png"))


# %%
def main():
    step1_roipool()
    step2_roialign()
    step3_aligned()
    step4_adaptive()
    step5_crop_and_resize()
    step6_quantisation()


# %% [markdown]
# Run every step (as `python tutorials/04_roipool_vs_roialign.py` does).

# %%
if __name__ == "__main__":
    main()
