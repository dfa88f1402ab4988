"""A live plot of training: loss per step, validation loss and the task's score (mean IoU, AP50, PQ) per epoch (matplotlib).

The figure is drawn off the GUI thread (matplotlib's Agg canvas, in a thread of its own) and shown as
a picture, so a redraw never stalls the viewer while it trains.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from magicgui.widgets import Container
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QObject, QSize, Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy


class _Drawn(QObject):
    """Carries a finished picture from the drawing thread to the GUI thread (a queued signal)."""

    ready = Signal(object)


class _Picture(QLabel):
    """Shows the drawn figure; its size hints are fixed (not the picture's) and a resize asks for a redraw."""

    def __init__(self, on_resize: Any) -> None:
        super().__init__()
        self._on_resize = on_resize

    def minimumSizeHint(self) -> QSize:
        return QSize(160, 200)

    def sizeHint(self) -> QSize:
        return QSize(360, 216)

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self._on_resize()


class _Painter:
    """One background thread that draws the latest request only (older ones are dropped)."""

    def __init__(self, draw: Any, deliver: Any) -> None:
        self._draw, self._deliver = draw, deliver
        self._pending: Any = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    def request(self, job: Any) -> None:
        with self._wake:
            self._pending = job
            self.idle.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="segsuite-plot", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._pending is None and not self._wake.wait(timeout=5.0):
                    self._thread = None
                    self.idle.set()
                    return  # idle for a while: the thread ends (a new request starts another)
                job, self._pending = self._pending, None
            if job is not None:
                with contextlib.suppress(Exception):  # a plot must never take training down
                    self._deliver(self._draw(job))
            with self._wake:
                if self._pending is None:
                    self.idle.set()


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
        FigureCanvasAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self.canvas = _Picture(lambda: self.draw() if hasattr(self, "steps") else None)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.canvas.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.native.layout().addWidget(self.canvas)
        self._drawn_signal = _Drawn()
        self._drawn_signal.ready.connect(self._show)
        self._painter = _Painter(self._render, self._drawn_signal.ready.emit)
        self._lock = threading.Lock()  # the figure is drawn by one thread at a time
        self.reset()

    def set_theme(self, name: str) -> None:
        """Redraw in the colours of napari's theme ``name`` (``"dark"``, ``"light"``, ...)."""
        self.colours = theme_colours(name)
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
        """Ask for a redraw with the data so far; it is drawn in the background and shown when ready."""
        try:
            ratio = self.canvas.devicePixelRatioF() or 1.0
            w, h = max(self.canvas.width(), 160), max(self.canvas.height(), 200)
        except RuntimeError:
            return  # the dock was closed
        snapshot = {
            "size": (w, h, ratio),
            "colours": dict(self.colours),
            "metric": self.metric_name,
            "loss": (list(self.steps), list(self.loss)),
            "val": (list(self.val_steps), list(self.val_loss), list(self.val_iou)),
            "parent": self.parent_score,
        }
        self._drawn = time.monotonic()
        self._painter.request(snapshot)

    def wait_drawn(self, timeout: float = 10.0) -> bool:
        """Block until the latest redraw is on screen's way (tests, screenshots)."""
        return self._painter.idle.wait(timeout)

    def _show(self, picture: Any) -> None:
        image, ratio = picture
        pixmap = QPixmap.fromImage(image)
        pixmap.setDevicePixelRatio(ratio)
        with contextlib.suppress(RuntimeError):  # the dock was closed while it was drawn
            self.canvas.setPixmap(pixmap)

    def _render(self, job: dict[str, Any]) -> tuple[QImage, float]:
        """Draw the figure for ``job`` (in the drawing thread): an RGBA picture and its pixel ratio."""
        with self._lock:
            w, h, ratio = job["size"]
            self.figure.set_dpi(90 * ratio)
            self.figure.set_size_inches(w / 90, h / 90)
            self._plot(job)
            canvas = self.figure.canvas
            canvas.draw()
            buf = canvas.buffer_rgba()  # type: ignore[attr-defined]
            image = QImage(bytes(buf), buf.shape[1], buf.shape[0], QImage.Format.Format_RGBA8888).copy()
        return image, ratio

    def _plot(self, job: dict[str, Any]) -> None:
        colours, metric = job["colours"], job["metric"]
        steps, loss = job["loss"]
        val_steps, val_loss, val_iou = job["val"]
        fg, bg = colours["fg"], colours["bg"]
        self.figure.set_facecolor(bg)
        for ax in (self.ax, self.ax2):
            ax.clear()
            ax.set_facecolor(bg)
            ax.tick_params(colors=fg, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(colours["frame"])
        if loss:
            self.ax.plot(steps, loss, color="#7aa6da", lw=0.8, alpha=0.6, label="train loss")
        if val_loss:
            self.ax.plot(val_steps, val_loss, "o-", color="#e78a4e", ms=3, lw=1.2, label="val loss")
            self.ax2.plot(val_steps, val_iou, "s-", color="#8ec07c", ms=3, lw=1.2, label=f"val {metric}")
        if job["parent"] is not None:
            self.ax2.axhline(job["parent"], color="#8ec07c", ls="--", lw=1, label=f"parent {metric}")
        self.ax.set_xlabel("step", color=fg, fontsize=8)
        self.ax.set_ylabel("loss", color=fg, fontsize=8)
        self.ax2.set_ylabel(metric, color=fg, fontsize=8)
        self.ax2.set_ylim(0, 1)
        self.ax2.yaxis.set_label_position("right")
        self.ax2.yaxis.tick_right()
        handles = self.ax.get_legend_handles_labels()[0] + self.ax2.get_legend_handles_labels()[0]
        if handles:
            self.ax.legend(handles=handles, fontsize=7, loc="upper right", facecolor=bg, labelcolor=fg, framealpha=0.8)
