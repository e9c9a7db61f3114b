"""Training: the five losses and the learning rate against the step (tutorial 08).

Shapes used below:
    S: logged steps
"""

import matplotlib.pyplot as plt
import numpy as np


def plot_loss_curves(log, loss_names, smooth=20):
    """The five training losses and their sum against the step, and the learning rate.

    log: column name -> (S,) float array, as ``train.read_log`` returns it (step, lr,
    seconds, the losses and their sum "loss").
    loss_names: the columns to draw. smooth: width of the running mean drawn over the
    raw values (which are noisy: each step sees only a few images).
    """
    steps = log["step"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(loss_names) + ["loss"]
    for k, name in enumerate(names):
        values = log[name]
        ax = axes[1] if name == "loss" else axes[0]
        colour = "black" if name == "loss" else f"C{k}"
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        width = max(1, min(smooth, len(values)))
        running = np.convolve(values, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1 :], running, color=colour, label=name, linewidth=1.8)
    axes[0].set_title(f"the five losses (running mean of {smooth} steps)")
    axes[1].set_title("total loss and learning rate")
    lr_ax = axes[1].twinx()
    lr_ax.plot(steps, log["lr"], color="tab:red", linestyle="--", label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:red")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, framealpha=0.95)
    handles = axes[1].get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    lr_ax.legend(handles=handles, loc="center right", fontsize=8, framealpha=0.95)
    fig.tight_layout()
    return fig
