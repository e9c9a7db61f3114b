# %% [markdown]
# # Tutorial 01 — anchors: the boxes the Region Proposal Network starts from.
#
# The RPN does not search for objects at every position and size. It scores and refines a
# fixed set of reference boxes, the *anchors* (Faster R-CNN §3.1.1): every location of
# every feature map carries A of them. With a feature pyramid (FPN §4.1) each level gets
# one size, matched to its stride — 32 px on P2 (stride 4) up to 512 px on P6 (stride 64)
# — and three shapes, aspect ratios h/w of 0.5, 1 and 2. So A = 3 and an 800 x 1216 image
# carries about 242 thousand anchors.
#
# This tutorial builds them the way torchvision does, which matters: a model trained with
# torchvision predicts deltas *relative to torchvision's anchors*, so ours must be
# identical to the last pixel.
#
# 1. The cell anchors of every level: A boxes centred on (0, 0).
# 2. The worked example of the notes: P4, stride 16, size 128. The notes compute
#    181 x 91 for ratio 0.5; torchvision gives 182 x 90, because it rounds the
#    *half-extents* (90.51 -> 91, 45.25 -> 45), not the width and height.
# 3. The tiling: cell anchors shifted to every cell corner, stride = image // feature size,
#    in location-major order; the count per level for an 800 x 1216 image.
#
# Run: ``python tutorials/01_anchors.py`` (a few seconds; figures go to ``figures/``).


# %%
import pathlib

import matplotlib
import numpy as np

from tinymaskrcnn.anchors import AnchorGenerator
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.anchors import (
    plot_anchor_tiling,
    plot_cell_anchors,
    plot_p4_anchor_rounding,
)

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = ((0.5, 1.0, 2.0),) * 5


# %% [markdown]
# ## 1. The cell anchors of every level: A boxes centred on (0, 0).
#
# ![01_cell_anchors](../figures/01_cell_anchors.png)


# %%
def step1_cell_anchors(generator):
    print("1. Cell anchors (x1, y1, x2, y2 around the cell corner), ratios h/w 0.5, 1, 2:")
    for level, cells in enumerate(generator.cell_anchors, start=2):
        shapes = ", ".join(f"{c[2] - c[0]:.0f}x{c[3] - c[1]:.0f}" for c in cells)
        print(f"   P{level}: size {SIZES[level - 2][0]:3d} -> {shapes}")
    fig = plot_cell_anchors(generator.cell_anchors, SIZES, RATIOS)
    print(f"   -> {save(fig, FIGURES / '01_cell_anchors.png')}")


# %% [markdown]
# ## 2. The worked example of the notes: P4, stride 16, size 128. The notes compute 181 x 91 for
# ratio 0.5; torchvision gives 182 x 90, because it rounds the *half-extents* (90.51 -> 91, 45.25
# -> 45), not the width and height.
#
# ![01_p4_anchors](../figures/01_p4_anchors.png)


# %%
def step2_p4_example(generator):
    print("2. P4 (stride 16), size 128:")
    cells = generator.cell_anchors[2]
    ratios = np.array(RATIOS[2])
    exact_w = 128 / np.sqrt(ratios)
    exact_h = 128 * np.sqrt(ratios)
    for r, w, h, c in zip(ratios, exact_w, exact_h, cells, strict=True):
        print(
            f"   h/w = {r}: exact {w:.2f} x {h:.2f}; half-extents {w / 2:.2f}, {h / 2:.2f} "
            f"round to {c[2]:.0f}, {c[3]:.0f} -> {c[2] - c[0]:.0f} x {c[3] - c[1]:.0f} "
            f"(rounding w and h instead would give {np.round(w):.0f} x {np.round(h):.0f})"
        )
    fig = plot_p4_anchor_rounding(cells, np.stack([exact_w, exact_h], axis=1))
    print(f"   -> {save(fig, FIGURES / '01_p4_anchors.png')}")


# %% [markdown]
# ## 3. The tiling: cell anchors shifted to every cell corner, stride = image // feature size, in
# location-major order; the count per level for an 800 x 1216 image.
#
# ![01_anchor_tiling](../figures/01_anchor_tiling.png)


# %%
def step3_tiling(generator):
    image, _ = ShapesDataset(1, image_size=256, seed=1)[0]
    image_size = image.shape[1:]
    feature_sizes = [(image_size[0] // s, image_size[1] // s) for s in (4, 8, 16, 32, 64)]
    anchors = generator.generate(image_size, feature_sizes)
    strides = generator.strides(image_size, feature_sizes)
    print(f"3. Tiling a {image_size[0]}x{image_size[1]} image, strides {[s[0] for s in strides]}:")
    for level, a in enumerate(anchors, start=2):
        print(f"   P{level}: {feature_sizes[level - 2]} cells x 3 = {len(a)} anchors; first {a[0]}")

    big = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    big_anchors = generator.generate((800, 1216), big)
    counts = {f"P{k + 2}": len(a) for k, a in enumerate(big_anchors)}
    print(f"   800x1216 (P6 is 13x19: stride 800 // 13 = 61 vertically, not 64): {counts}")
    print(f"   total {sum(counts.values()):,} anchors")
    fig = plot_anchor_tiling(image, anchors, strides, location=(128, 128), counts=counts)
    print(f"   -> {save(fig, FIGURES / '01_anchor_tiling.png')}")


# %%
def main():
    generator = AnchorGenerator(SIZES, RATIOS)
    step1_cell_anchors(generator)
    step2_p4_example(generator)
    step3_tiling(generator)


# %% [markdown]
# Run every step (as `python tutorials/01_anchors.py` does).

# %%
if __name__ == "__main__":
    main()
