"""Figures people would rather look at than read: loss curves and confusion matrices."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: flows run on workers without a display

import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def loss_curves_figure(history: list[dict], title: str) -> Figure:
    """Train and validation loss (left) and accuracy (right) per epoch."""
    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="valid")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="valid")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): rows are the actual class, columns the predicted one."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(actual), np.asarray(predicted)), 1)
    return matrix


def confusion_matrix_figure(matrix: np.ndarray, classes: list[str], title: str) -> Figure:
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if count > threshold else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def most_confused(matrix: np.ndarray, classes: list[str], top: int = 10) -> list[dict]:
    """The off-diagonal cells with the most examples, largest first (fast.ai's
    ``most_confused``): which class was taken for which, and how often."""
    pairs = [
        {"actual": classes[i], "predicted": classes[j], "count": int(matrix[i, j])}
        for i, j in zip(*np.nonzero(matrix), strict=True)
        if i != j
    ]
    return sorted(pairs, key=lambda p: (-p["count"], p["actual"], p["predicted"]))[:top]


def heatmap_figure(
    rows: list[float], cols: list[int], values: np.ndarray, title: str, label: str
) -> Figure:
    """Learning rate (rows) x epochs (columns) of a metric; NaN cells (not run, or diverged)
    are left blank."""
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 0.6 * len(rows) + 2))
    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    ax.set(xlabel="epochs", ylabel="learning rate", title=title)
    for (i, j), v in np.ndenumerate(values):
        ax.text(
            j,
            i,
            "-" if not np.isfinite(v) else f"{v:.3f}",
            ha="center",
            va="center",
            color="white",
            fontsize=9,
        )
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    plt.close(fig)
    return fig


def lr_find_figure(lrs: list[float], losses: list[float], suggestion: float) -> Figure:
    """Lesson 2's learning-rate finder plot: smoothed loss against a log-scaled rate."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="loss (smoothed)", title="learning-rate finder")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def fitted_lines_figure(
    x: np.ndarray, y: np.ndarray, lines: dict[str, tuple[float, float]], title: str
) -> Figure:
    """The data and one fitted line y = a*x + b per label; the axes stay on the data, so a
    diverged line visibly leaves the picture."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(x, y, s=10, color="grey", label="data")
    grid = np.linspace(x.min(), x.max(), 2)
    for label, (a, b) in lines.items():
        if np.isfinite(a) and np.isfinite(b):
            ax.plot(grid, a * grid + b, label=f"{label}: y={a:.2f}x+{b:.2f}")
        else:
            ax.plot([], [], label=f"{label}: diverged (non-finite)")
    ax.set_ylim(y.min() - 1, y.max() + 1)
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def line_animation_gif(
    x: np.ndarray, y: np.ndarray, steps: list[tuple[float, float]], path, title: str, frames=40
) -> None:
    """Write a GIF of the line y = a*x + b moving step by step toward (or away from) the data,
    lesson2-sgd's animation; at most ``frames`` frames, evenly spaced over the steps."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    chosen = sorted({round(i) for i in np.linspace(0, len(steps) - 1, min(frames, len(steps)))})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(x, y, s=8, color="grey")
    ax.set_ylim(y.min() - 1, y.max() + 1)
    ax.set_xlim(x.min(), x.max())
    grid = np.linspace(x.min(), x.max(), 2)
    (line,) = ax.plot([], [], color="red")
    caption = ax.set_title(title)

    def draw(k: int):
        a, b = steps[chosen[k]]
        line.set_data(grid, a * grid + b if np.isfinite(a) and np.isfinite(b) else [np.nan] * 2)
        caption.set_text(f"{title}, step {chosen[k]}")
        return (line, caption)

    animation = FuncAnimation(fig, draw, frames=len(chosen), blit=False)
    animation.save(str(path), writer=PillowWriter(fps=10))
    plt.close(fig)


def drift_figure(
    classes: list[str],
    window_shares: dict[str, float],
    reference_shares: dict[str, float],
    window: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
) -> Figure:
    """The monitor's picture: predicted-class shares, then the distributions it compared
    (confidence, brightness, contrast), window against the champion's validation data."""
    names = list(window)
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.2 * (1 + len(names)), 2.8))
    x = np.arange(len(classes))
    axes[0].bar(x - 0.2, [reference_shares.get(c, 0) for c in classes], 0.4, label="validation")
    axes[0].bar(x + 0.2, [window_shares.get(c, 0) for c in classes], 0.4, label="window")
    axes[0].set(title="predicted class", xticks=x, ylabel="share")
    axes[0].set_xticklabels(classes, rotation=90 if len(classes) > 12 else 0)
    axes[0].legend(fontsize=7)
    for ax, name in zip(axes[1:], names, strict=True):
        bins = np.linspace(0, 1, 21)
        ax.hist(reference[name], bins=bins, alpha=0.6, density=True, label="validation")
        ax.hist(window[name], bins=bins, alpha=0.6, density=True, label="window")
        ax.set(title=name)
    fig.tight_layout()
    plt.close(fig)
    return fig
