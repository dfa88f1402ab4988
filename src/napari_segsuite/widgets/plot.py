"""A live plot of training: loss per step, validation loss and the task's score (mean IoU, AP50, PQ) per epoch (matplotlib)."""

from __future__ import annotations

import time

from magicgui.widgets import Container
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


def theme_colours(name: str) -> dict[str, str]:
    """Background, text and frame colours of napari's theme ``name`` (the dark theme's if unknown)."""
    try:
        from napari.utils.theme import get_theme

        t = get_theme(name)
        return {"bg": t.background.as_hex(), "fg": t.text.as_hex(), "frame": t.foreground.as_hex()}
    except (KeyError, ValueError, ImportError, AttributeError):
        return {"bg": "#262930", "fg": "#d0d0d0", "frame": "#555555"}


class TrainingPlot(Container):
    """Feed it :class:`~napari_segsuite.progress.Progress` reports with :meth:`add`; it redraws at most
    twice a second. Its colours follow napari's theme (:meth:`set_theme`)."""

    def __init__(self, theme: str = "dark") -> None:
        super().__init__(labels=False)
        self.metric_name = "mean IoU"  # the task's validation score: mean IoU, AP50 or PQ
        self.colours = theme_colours(theme)
        self.figure = Figure(figsize=(4, 2.4), dpi=90, facecolor=self.colours["bg"], layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.native.layout().addWidget(self.canvas)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self.reset()

    def set_theme(self, name: str) -> None:
        """Redraw in the colours of napari's theme ``name`` (``"dark"``, ``"light"``, ...)."""
        self.colours = theme_colours(name)
        self.figure.set_facecolor(self.colours["bg"])
        self.draw()

    def reset(self) -> None:
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.val_steps: list[int] = []
        self.val_loss: list[float] = []
        self.val_iou: list[float] = []
        self.parent_score: float | None = None
        self._drawn = 0.0
        self.draw()

    def add(self, report) -> None:
        m = report.metrics
        if "parent_score" in m:  # fine-tuning: the starting model's score, for comparison
            self.parent_score = m["parent_score"]
            self.draw()
        elif "val_loss" in m:
            self.val_steps.append(report.step)
            self.val_loss.append(m["val_loss"])
            self.val_iou.append(m.get("val_score", float("nan")))
            self.draw()
        elif "loss" in m:
            self.steps.append(report.step)
            self.loss.append(m["loss"])
            if time.monotonic() - self._drawn > 0.5:
                self.draw()

    def draw(self) -> None:
        fg, bg = self.colours["fg"], self.colours["bg"]
        for ax in (self.ax, self.ax2):
            ax.clear()
            ax.set_facecolor(bg)
            ax.tick_params(colors=fg, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(self.colours["frame"])
        if self.loss:
            self.ax.plot(self.steps, self.loss, color="#7aa6da", lw=0.8, alpha=0.6, label="train loss")
        if self.val_loss:
            self.ax.plot(self.val_steps, self.val_loss, "o-", color="#e78a4e", ms=3, lw=1.2, label="val loss")
            self.ax2.plot(
                self.val_steps, self.val_iou, "s-", color="#8ec07c", ms=3, lw=1.2, label=f"val {self.metric_name}"
            )
        if self.parent_score is not None:
            self.ax2.axhline(self.parent_score, color="#8ec07c", ls="--", lw=1, label=f"parent {self.metric_name}")
        self.ax.set_xlabel("step", color=fg, fontsize=8)
        self.ax.set_ylabel("loss", color=fg, fontsize=8)
        self.ax2.set_ylabel(self.metric_name, color=fg, fontsize=8)
        self.ax2.set_ylim(0, 1)
        self.ax2.yaxis.set_label_position("right")
        self.ax2.yaxis.tick_right()
        handles = self.ax.get_legend_handles_labels()[0] + self.ax2.get_legend_handles_labels()[0]
        if handles:
            self.ax.legend(handles=handles, fontsize=7, loc="upper right", facecolor=bg, labelcolor=fg, framealpha=0.8)
        self.canvas.draw_idle()
        self._drawn = time.monotonic()
