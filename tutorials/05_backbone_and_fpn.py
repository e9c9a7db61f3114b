# %% [markdown]
# # Tutorial 05 — the backbone and the feature pyramid: one image, nine feature maps.
#
# Mask R-CNN does not look at pixels directly. A ResNet (He et al., 2016) turns the image
# into feature maps at four strides -- C2 (1/4 of the image) to C5 (1/32) -- each coarser
# and with more channels than the last: deeper maps know *what* is there but have lost
# *where*. The Feature Pyramid Network (Lin et al., 2017) gives every scale both: a 1x1
# "lateral" convolution brings each C_l to 256 channels, and a top-down pathway adds the
# coarser level's map, upsampled by nearest neighbour, before a 3x3 convolution smooths
# the sum into P_l. P6, a subsampling of P5, serves only the RPN's largest anchors.
#
# Sizes are not exact halvings. Each stride-2 step rounds up (ceil), so an image 225 x 300
# gives C2 57 x 75, C3 29 x 38, C4 15 x 19, C5 8 x 10; the top-down pathway therefore
# upsamples "to the lateral's size" (8 -> 15 rows, not 16) with torch's nearest rule,
# row i taking source row floor(i * 8 / 15). In the model the image is padded to a
# multiple of 32 first, so there every step is an exact halving.
#
# The weights here are random (seeded, He-initialised as torchvision initialises them):
# what this tutorial shows is the geometry -- shapes, strides, and how information flows.
# Even so the maps already follow the objects: a random convolution still responds to
# edges and colour changes, and the pyramid carries that to every scale (tutorial 08
# trains the whole model on the shapes).
#
# 1. The shapes and strides table of C2..C5 and P2..P6 for a ResNet-50-FPN.
# 2. The pyramid drawn as a diagram: bottom-up, laterals, top-down, outputs.
# 3. The activation maps of every level over the image.
# 4. One top-down step taken apart: P5's running sum -> upsampled -> + lateral -> P4.
#
# Run: ``python tutorials/05_backbone_and_fpn.py`` (a few seconds; figures go to ``figures/``).


# %%
import pathlib
import time

import matplotlib
import numpy as np

from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.fpn import resnet_fpn_backbone
from tinymaskrcnn.nn.layers import nearest_indices, upsample_nearest
from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.fpn import plot_feature_pyramid, plot_fpn_pathways, plot_top_down_step

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
IMAGE_SIZE = (225, 300)
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)  # ImageNet, as torchvision
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


# %% [markdown]
# ## 1. The shapes and strides table of C2..C5 and P2..P6 for a ResNet-50-FPN.


# %%
def step1_table(model, x):
    print(f"1. ResNet-50-FPN on one {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image:")
    start = time.perf_counter()
    c_maps = model.body(x)
    p_maps = model.fpn(c_maps)
    print(f"   forward took {time.perf_counter() - start:.2f} s (NumPy reference)")
    strides = [IMAGE_SIZE[0] // p.shape[2] for p in p_maps]
    print("   level  stride  C (channels x h x w)   P (channels x h x w)")
    for level in range(2, 7):
        stride = 2**level
        c = "x".join(map(str, c_maps[level - 2].shape[1:])) if level < 6 else "-"
        p = "x".join(map(str, p_maps[level - 2].shape[1:]))
        print(f"   {level:5d}  {stride:6d}  {c:>21s}  {p:>21s}")
    # The anchor generator's stride is image // map: on this unpadded image that gives
    # 3, 7, 15, ... instead of 4, 8, 16 -- the reason the model pads to a multiple of 32.
    print(f"   image // map would give strides {strides}: the model pads to a multiple of 32")
    return c_maps, p_maps


# %% [markdown]
# ## 2. The pyramid drawn as a diagram: bottom-up, laterals, top-down, outputs.
#
# ![05_fpn_pathways](../figures/05_fpn_pathways.png)


# %%
def step2_diagram(c_maps, p_maps):
    print("2. The pathways drawn with these sizes:")
    c_shapes = [m.shape[1:] for m in c_maps]
    p_shapes = [m.shape[1:] for m in p_maps]
    fig = plot_fpn_pathways(c_shapes, p_shapes, [4, 8, 16, 32, 64], IMAGE_SIZE)
    print(f"   -> {save(fig, FIGURES / '05_fpn_pathways.png')}")


# %% [markdown]
# ## 3. The activation maps of every level over the image.
#
# ![05_feature_maps](../figures/05_feature_maps.png)


# %%
def step3_activations(image, c_maps, p_maps):
    print("3. Mean |activation| of every level (one image):")
    for name, maps in (("C", c_maps), ("P", p_maps)):
        means = ", ".join(f"{name}{i + 2} {np.abs(m[0]).mean():.3f}" for i, m in enumerate(maps))
        print(f"   {means}")
    fig = plot_feature_pyramid(
        image, [m[0] for m in c_maps], [m[0] for m in p_maps], [4, 8, 16, 32, 64]
    )
    print(f"   -> {save(fig, FIGURES / '05_feature_maps.png')}")


# %% [markdown]
# ## 4. One top-down step taken apart: P5's running sum -> upsampled -> + lateral -> P4.
#
# ![05_top_down](../figures/05_top_down.png)


# %%
def step4_top_down(model, c_maps):
    print("4. One top-down step, into P4:")
    fpn = model.fpn
    coarse = fpn.inner_blocks[3](c_maps[3])  # P5's running sum is C5's lateral alone
    lateral = fpn.inner_blocks[2](c_maps[2])
    upsampled = upsample_nearest(coarse, lateral.shape[2:])
    merged = lateral + upsampled
    output = fpn.layer_blocks[2](merged)
    rows = nearest_indices(coarse.shape[2], lateral.shape[2])
    print(f"   C5 lateral {coarse.shape[2]}x{coarse.shape[3]} -> upsampled to the C4 lateral's "
          f"{lateral.shape[2]}x{lateral.shape[3]}; source rows {rows.tolist()}")  # fmt: skip
    same = np.allclose(output, model.fpn(c_maps)[2])
    print(f"   equals the FPN's own P4: {same}")
    fig = plot_top_down_step(coarse[0], upsampled[0], lateral[0], merged[0], output[0], 4)
    print(f"   -> {save(fig, FIGURES / '05_top_down.png')}")


# %%
def main():
    image, _ = ShapesDataset(1, image_size=IMAGE_SIZE, seed=5)[0]
    x = ((image - MEAN) / STD)[None].astype(np.float32)
    model = resnet_fpn_backbone("resnet50", rng=np.random.default_rng(0)).eval()
    c_maps, p_maps = step1_table(model, x)
    step2_diagram(c_maps, p_maps)
    step3_activations(image, c_maps, p_maps)
    step4_top_down(model, c_maps)


# %% [markdown]
# Run every step (as `python tutorials/05_backbone_and_fpn.py` does).

# %%
if __name__ == "__main__":
    main()
