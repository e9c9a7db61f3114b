"""The Mask R-CNN paper's ablations (Table 2b, 2c), reproduced on synthetic shapes.

    python benchmarks/ablations.py                      # every variant, 1200 steps each
    python benchmarks/ablations.py --steps 300 --variants align pool

Each variant trains the shapes preset from the same seed, on the same batches, for the
same number of steps, changing one field; then COCO mask and box AP on the same 200
held-out images (seed 12345). The paper's direction (ResNet-50-C4 on COCO):

    RoI operator (Table 2c): mask AP / AP50 / AP75 RoIAlign 30.3 / 51.2 / 31.5 against
        RoIPool 26.9 / 48.8 / 26.4 -- quantisation misaligns features and masks, so the
        gap grows with the IoU threshold.
    Mask loss (Table 2b): per-class sigmoid 30.3 / 51.2 / 31.5 against softmax
        24.8 / 44.1 / 25.1 -- a multinomial over classes makes the masks compete, while
        the box branch has already chosen the class.

``crop_and_resize`` (TensorFlow's, used by matterport) has no backward here, so it is
scored by swapping it in at inference into the model trained with RoIAlign: the
misalignment alone, without retraining.

Run folders go to ``--out`` (default runs/ablations/<variant>); a finished run is only
re-evaluated, so an interrupted sweep can be started again. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

VARIANTS = {
    "align": {},
    "pool": {"roi_op": "pool"},
    "softmax": {"mask_loss": "softmax"},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/ablations"))
    args = parser.parse_args(argv)

    from tinymaskrcnn.config import MaskRCNNConfig
    from tinymaskrcnn.data.shapes import ShapesDataset
    from tinymaskrcnn.kernels import use_backend
    from tinymaskrcnn.model import MaskRCNN
    from tinymaskrcnn.train import (
        CHECKPOINT,
        WEIGHTS,
        TrainSettings,
        default_backend,
        evaluate_model,
        load_training_state,
        train,
    )

    held_out = ShapesDataset(args.eval_images, seed=12345)
    rows = []
    for name in args.variants:
        folder = args.out / name
        settings = TrainSettings(
            steps=args.steps, batch_size=args.batch_size, seed=args.seed, eval_images=0
        )
        done = (folder / WEIGHTS).exists() and load_training_state(folder / CHECKPOINT)[
            2
        ] >= args.steps
        start = time.perf_counter()
        if not done:
            resume = (folder / CHECKPOINT).exists()
            print(f"[{name}] training {args.steps} steps -> {folder}", flush=True)
            train(
                MaskRCNNConfig.shapes(**VARIANTS[name]),
                folder,
                settings,
                resume=resume,
                eval_dataset=False,
                progress=sys.stderr.isatty(),
            )
        trained = time.perf_counter() - start
        model = MaskRCNN.from_checkpoint(folder / WEIGHTS)
        evaluated = [(name, model)]
        if name == "align":
            swapped = MaskRCNN(dataclasses.replace(model.cfg, roi_op="crop_and_resize"))
            swapped.load_state_dict(model.state_dict())
            evaluated.append(("align, crop_and_resize at test", swapped.eval()))
        for label, m in evaluated:
            with use_backend(default_backend()):
                metrics = evaluate_model(m, held_out)
            rows.append((label, metrics, trained))
            print(f"[{label}] {_row(label, metrics)}", flush=True)
    print(
        f"\n{args.steps} steps of {args.batch_size} images, seed {args.seed}, "
        f"{args.eval_images} held-out images; {os.cpu_count()} CPUs"
    )
    print("| variant | mask AP | mask AP50 | mask AP75 | box AP | box AP50 |")
    print("|---|---|---|---|---|---|")
    for label, metrics, _ in rows:
        print(_row(label, metrics))
    return 0


def _row(label, metrics):
    m, b = metrics["segm"], metrics["bbox"]
    return (
        f"| {label} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | "
        f"{b['AP']:.3f} | {b['AP50']:.3f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
