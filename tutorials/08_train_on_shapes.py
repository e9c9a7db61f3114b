# %% [markdown]
# # Tutorial 08 — training Mask R-CNN from scratch on synthetic shapes.
#
# Everything so far ran forward. Training closes the loop: the model returns its five
# losses (RPN objectness and box regression, classifier, box regression, mask), their sum
# is differentiated by hand layer by layer (``model.backward()``), and SGD with momentum
# moves every weight a little against its gradient. The recipe is torchvision's (Mask
# R-CNN §3.1): momentum 0.9, weight decay 1e-4, a linear warm-up that keeps the first
# steps of a randomly initialised network from blowing up, then a 10x drop of the rate
# late in training.
#
# ``tinymaskrcnn.train.train`` does all of it with what a long run needs: a progress bar,
# a CSV log, checkpoints written atomically, and a ``--resume`` that continues bit for bit
# (the batch of a step is a function of the step number; the checkpoint holds the
# weights, the optimizer's momentum, the step and the samplers' random state).
#
# 1. An untrained model on held-out images: random boxes, or none.
# 2. A short run (a couple of minutes on a CPU): the five losses falling.
# 3. The same held-out images after the short run, and after the full run that produced
#    the shapes model shipped in the package (``tinymaskrcnn train --config shapes``).
# 4. COCO box and mask AP of both on held-out images.
# 5. The loss curves and held-out AP of the full run (its log is committed in
#    ``benchmarks/shapes_train_log.csv``), of which the short run is only the beginning.
#
# Run: ``python tutorials/08_train_on_shapes.py`` (figures go to ``figures/``; the short
# run goes to a temporary folder).


# %%
import pathlib
import tempfile
import time

import matplotlib
import numpy as np

from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.kernels import use_backend
from tinymaskrcnn.model import LOSS_NAMES, MaskRCNN
from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.detections import plot_detection_rows
from tinymaskrcnn.plotting.training import plot_loss_curves
from tinymaskrcnn.train import (
    LOG,
    TrainSettings,
    default_backend,
    evaluate_model,
    read_log,
    train,
)

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
SHORT_STEPS = 300
EVAL_IMAGES = 50
BENCHMARKS = HERE.parent / "benchmarks"
FULL_LOG = BENCHMARKS / "shapes_train_log.csv"
FULL_EVAL = BENCHMARKS / "shapes_train_eval.csv"


# %%
def detect(model, images):
    with use_backend(default_backend()):
        return model.eval()(images)


# %%
def main():
    held_out = ShapesDataset(EVAL_IMAGES, seed=12345)
    shown = [held_out[i][0] for i in range(4)]
    names = ShapesDataset.CLASSES

    print("1. an untrained model (random weights, seed 0)")
    untrained = MaskRCNN(MaskRCNNConfig.shapes(), rng=np.random.default_rng(0))
    before = detect(untrained, shown)
    scores = np.concatenate([d["scores"] for d in before])
    print(f"   {len(scores)} detections on 4 images, best score {scores.max(initial=0):.2f}")

    print(f"2. training {SHORT_STEPS} steps of 4 images (backend {default_backend()})")
    with tempfile.TemporaryDirectory() as run:
        # Half the full run's rate: with a warm-up this short, 0.04 can blow up (the loop
        # then stops with a FloatingPointError naming the step, rather than train on NaN).
        settings = TrainSettings(steps=SHORT_STEPS, lr=0.02, warmup_iters=100, eval_images=0)
        start = time.perf_counter()
        result = train(MaskRCNNConfig.shapes(), run, settings, eval_dataset=False)
        print(f"   {result.step} steps in {time.perf_counter() - start:.0f} s")
        log = read_log(pathlib.Path(run) / LOG)
    for name in (*LOSS_NAMES, "loss"):
        first, last = log[name][:20].mean(), log[name][-20:].mean()
        print(f"   {name:17s} first 20 steps {first:.3f} -> last 20 steps {last:.3f}")
    save(plot_loss_curves(log, LOSS_NAMES), FIGURES / "08_loss_curves.png")

    print("3. detections before and after")
    after = detect(result.model, shown)
    best = np.concatenate([d["scores"] for d in after]).max(initial=0)
    print(f"   after {SHORT_STEPS} steps the best score is {best:.2f}: it is only beginning")
    rows = [("untrained", before), (f"after {SHORT_STEPS} steps", after)]
    models = {f"{SHORT_STEPS} steps": result.model}
    try:
        shipped = MaskRCNN.from_pretrained("shapes")
        rows.append(("shipped model", detect(shipped, shown)))
        models["shipped model"] = shipped
    except FileNotFoundError:
        print("   (no shipped shapes model in this installation: its row is left out)")
    save(plot_detection_rows(shown, rows, names), FIGURES / "08_before_after.png")

    print(f"4. COCO AP on {EVAL_IMAGES} held-out images (seed 12345, never trained on)")
    for name, model in models.items():
        with use_backend(default_backend()):
            metrics = evaluate_model(model, held_out)
        box, mask = metrics["bbox"], metrics["segm"]
        print(
            f"   {name:14s} box AP {box['AP']:.3f} AP50 {box['AP50']:.3f}   "
            f"mask AP {mask['AP']:.3f} AP50 {mask['AP50']:.3f}"
        )

    print("5. the full run behind the shipped model (its log is committed in benchmarks/)")
    log = read_log(FULL_LOG)
    steps = len(log["step"])
    minutes = log["seconds"].sum() / 60
    print(f"   {steps} steps, {minutes:.1f} min of training; held-out AP along the way:")
    evals = read_log(FULL_EVAL)
    for k, step in enumerate(evals["step"]):
        print(
            f"   step {step:5.0f}: box AP50 {evals['bbox_AP50'][k]:.3f}  "
            f"mask AP50 {evals['segm_AP50'][k]:.3f}  mask AP {evals['segm_AP'][k]:.3f}"
        )
    fig = plot_loss_curves(log, LOSS_NAMES, smooth=100)
    save(fig, FIGURES / "08_shapes_training.png")
    print(f"figures: {FIGURES}/08_loss_curves.png, 08_before_after.png, 08_shapes_training.png")


# %% [markdown]
# Run every step (as `python tutorials/08_train_on_shapes.py` does).

# %%
if __name__ == "__main__":
    main()
