"""What both dock widgets share: the progress row, the worker wiring, error reporting, and the
layout that keeps a dock within a laptop screen."""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import notification_manager, show_error, show_warning
from superqt.utils import GeneratorWorker

log = logging.getLogger(__name__)


def guard_triton() -> None:
    """Keep torch from loading triton into a process where Mesa's LLVM is already loaded.

    torch imports ``triton`` lazily (the first optimiser built imports ``torch._dynamo``, which
    probes for it). Where napari renders with Mesa's software OpenGL (llvmpipe: Xvfb, VMs, remote
    desktops), Mesa has loaded its own libLLVM and triton's native library then segfaults the whole
    viewer. Triton only serves ``torch.compile`` kernels, which this plugin does not use, so in such
    a process torch is told it is absent.
    """
    if "triton" in sys.modules:
        return
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    if "libLLVM" in maps:
        log.info("Mesa's LLVM is loaded: hiding triton from torch to avoid a crash")
        sys.modules["triton"] = None  # type: ignore[assignment]  # makes `import triton` raise ImportError


KNOWN_ERRORS = (ValueError, KeyError, FileNotFoundError, RuntimeError)


def os_error_text(err: OSError) -> str:
    """One sentence for a file that could not be written or read (disk full, read-only folder, ...)."""
    where = f" '{err.filename}'" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"The disk is full: could not write{where}. Free some space and try again; files saved before are kept."
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"Cannot write{where}: the folder is read-only or not yours ({err.strerror}). "
            "Pick a folder you can write to; files saved before are kept."
        )
    return f"Could not read or write{where}: {err.strerror or err}."


def wrapped_label() -> Label:
    """A Label whose text wraps, over the whole width of the dock (not squeezed to a narrow column)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)  # close under what is above
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return label


def row(*widgets: Any) -> Container:
    """Widgets side by side, without margins of their own."""
    box = Container(widgets=list(widgets), layout="horizontal", labels=False)
    box.margins = (0, 0, 0, 0)
    return box


class _Worker(GeneratorWorker):
    """A generator worker whose ``quit`` (napari calls it for every task when its viewer closes) can
    mean "cancel": a training then ends as after Cancel, saving its best model, instead of being
    dropped between two steps. Its errors are reported once, by :meth:`RunControls._on_error` (napari's
    own worker class would add a second notification with the traceback)."""

    on_quit: Callable[[], None] | None = None

    def quit(self) -> None:
        if self.on_quit is not None:
            self.on_quit()
        else:
            super().quit()


class RunControls(Container):
    """A start button, a Cancel button, a progress bar and a status line, driving one worker at a time."""

    def __init__(self, start_text: str, on_start: Callable[[], Any]) -> None:
        self.start_btn = PushButton(text=start_text)
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = wrapped_label()  # a long error wraps instead of widening the dock
        super().__init__(
            widgets=[
                row(self.start_btn, self.cancel_btn),
                self.bar,
                self.status,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self.worker: Any = None
        self._t0 = time.monotonic()
        self._stop_note = ""
        self._unwatch: Callable[[], None] | None = None
        self.start_btn.changed.connect(lambda _=None: on_start())
        self.native.destroyed.connect(lambda *_: self._abandon())

    def launch(
        self,
        work: Callable[..., Any],
        *args: Any,
        on_yield: Callable[[Any], None],
        on_done: Callable[[Any], None],
        on_cancel: Callable[[], None] | None = None,
    ) -> Any:
        """Run generator function ``work(*args)`` in a thread worker; Cancel calls ``on_cancel`` or quits it."""
        guard_triton()
        worker = create_worker(work, *args, _start_thread=False, _worker_class=_Worker, _ignore_errors=True)
        worker.on_quit = on_cancel
        worker.yielded.connect(on_yield)
        worker.returned.connect(on_done)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self.status.__setattr__("value", self._stop_note or "Cancelled."))
        worker.finished.connect(self._on_finished)
        self.cancel_btn.changed.disconnect()
        self.cancel_btn.changed.connect(lambda _=None: self._cancel(on_cancel))
        self.worker = worker
        self._stop_note = ""
        self._t0 = time.monotonic()
        self.start_btn.enabled, self.cancel_btn.enabled = False, True
        self.bar.visible, self.bar.value = True, 0
        worker.start()
        return worker

    def show_progress(self, step: int, total: int, note: str) -> None:
        self.bar.max = max(1, total)
        self.bar.value = min(step, self.bar.max)
        elapsed = time.monotonic() - self._t0
        left = ""
        if 0 < step < total and elapsed > 2:
            secs = elapsed / step * (total - step)
            left = f" · ~{secs / 60:.0f} min left" if secs >= 90 else f" · ~{secs:.0f} s left"
        self.status.value = note + left

    def busy(self) -> bool:
        """Whether a run is going (then say so and start nothing: one run at a time per dock)."""
        if self.worker is None:
            return False
        self.refuse("A run is still going: wait for it to finish or press Cancel before starting another.")
        return True

    def refuse(self, message: str) -> None:
        """A check failed before any run: say so in the status line and in a pop-up; returns ``None``."""
        self.status.value = message
        show_error(message)

    def stop(self, note: str) -> None:
        """Stop the running worker (at its next step) and leave ``note`` in the status line."""
        self._stop_note = note
        self.status.value = note
        self.cancel_btn.enabled = False
        if self.worker is not None:
            show_warning(note)
            self.worker.quit()

    def watch(self, viewer: Any, layers: list[Any], on_removed: Callable[[Any], None]) -> None:
        """Call ``on_removed(layer)`` when one of ``layers`` leaves ``viewer`` while the current run lasts."""
        ids = {id(la) for la in layers if la is not None}

        def removed(event: Any) -> None:
            if id(event.value) in ids and self.worker is not None:
                on_removed(event.value)

        viewer.layers.events.removed.connect(removed)
        self._unwatch = lambda: viewer.layers.events.removed.disconnect(removed)

    def _cancel(self, on_cancel: Callable[[], None] | None) -> None:
        self.status.value = "Cancelling..."
        self.cancel_btn.enabled = False
        if on_cancel is not None:
            on_cancel()
        elif self.worker is not None:
            self.worker.quit()

    def _abandon(self) -> None:
        """The dock is gone (the viewer was closed): stop the run at its next step, as Cancel does (a
        training keeps its best model), and let nothing call back into the deleted widgets."""
        worker = self.worker
        if worker is None:
            return
        for sig in (worker.yielded, worker.returned, worker.errored, worker.aborted, worker.finished):
            with contextlib.suppress(TypeError, RuntimeError):
                sig.disconnect()
        worker.quit()  # Cancel for a training (it keeps its best model), abort for the rest
        self.worker = None

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            msg = os_error_text(err)
            self.status.value = f"Error: {msg}"
            show_error(msg)
        elif isinstance(err, KNOWN_ERRORS):
            msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            self.status.value = f"Error: {msg}"
            show_error(str(msg))
        else:
            self.status.value = f"Error: {type(err).__name__}: {err}"
            notification_manager.receive_error(type(err), err, err.__traceback__)

    def _on_finished(self) -> None:
        self.start_btn.enabled, self.cancel_btn.enabled = True, False
        self.bar.visible = False
        self.worker = None
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None


def ask(parent: Any, title: str, question: str) -> bool:
    """A Yes/No question in a dialog over ``parent`` (the widgets' default ``ask``; tests replace it)."""
    from qtpy.QtWidgets import QMessageBox

    return QMessageBox.question(parent, title, question) == QMessageBox.StandardButton.Yes


def scroll_above(outer: Container, body: Container, min_height: int = 120, expand: bool = True) -> Any:
    """Put ``body`` in a scroll area at the top of ``outer``, above what ``outer`` holds (its run
    controls), so the dock's minimum height is that of the controls plus ``min_height``: the form
    scrolls on a small screen and the button, progress, status and Cancel stay in view.

    ``expand``: the dock takes the height its neighbours leave (else it keeps the form's height).
    """
    from qtpy.QtCore import QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy

    class _Area(QScrollArea):
        def minimumSizeHint(self) -> QSize:  # as wide as the form needs: it scrolls up and down only
            sb = self.verticalScrollBar()
            bar = sb.sizeHint().width() if sb is not None else 16
            return QSize(body.native.minimumSizeHint().width() + bar, min_height)

        def sizeHint(self) -> QSize:  # the whole form where the screen has room (at most 560 px)
            return QSize(self.minimumSizeHint().width(), min(body.native.sizeHint().height() + 4, 560))

    area = _Area()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(body.native)
    outer.native.layout().insertWidget(0, area, 1)
    grow = QSizePolicy.Policy.Expanding if expand else QSizePolicy.Policy.Maximum
    outer.native.setSizePolicy(QSizePolicy.Policy.Preferred, grow)
    body.native.layout().addStretch()  # the form stays packed at the top of a taller area
    return area


def _kind(conv: str) -> tuple[str, str]:
    """(what the image is, what the model takes) for a conversion ``"RGB to grey"`` / ``"grey to RGB"``."""
    have, want = conv.split(" to ")
    return have, want


def fit_note(model: str, image: str, conv: str | None) -> str:
    """One sentence on an image whose channels do not match the model ('' when they do)."""
    if conv is None:
        return ""
    have, want = _kind(conv)
    return (
        f"'{model}' takes {want} images and '{image}' is {have}: it will be converted to {want} (you are asked first)."
    )


def check_fit(
    model: str,
    in_channels: int | None,
    spatial_dims: int,
    image: str,
    shape: tuple[int, ...],
    rgb: bool,
    ask_user: Callable[[str], bool],
) -> str:
    """What the engine would refuse or get wrong with this image, checked before any run.

    Returns:
        ``""`` when the image fits the model; a note (``"converted 'x' from RGB to grey ..."``) when
        its channels did not and the user agreed to convert it.

    Raises:
        ValueError: one sentence: a 3D model on a 2D image, or a conversion the user declined.
    """
    from ..checks import channel_conversion, check_image_dims

    check_image_dims(spatial_dims, shape, rgb, model, image)
    conv = None if in_channels is None else channel_conversion(in_channels, shape, rgb)
    if conv is None:
        return ""
    have, want = _kind(conv)
    how = "the mean of R, G and B" if want == "grey" else "the grey value in all three channels"
    if not ask_user(f"'{image}' is {have} but '{model}' was trained on {want} images: convert it to {want} ({how})?"):
        raise ValueError(
            f"Nothing started: '{model}' takes {want} images and '{image}' is {have}; pick a model trained on "
            f"{have} images, or agree to convert."
        )
    return f"converted '{image}' from {conv} for '{model}'"


def fits_as_is(model: str, in_channels: int | None, spatial_dims: int, layer: Any) -> bool:
    """Whether an image layer fits the model without a conversion to ask about (:func:`check_fit`)."""
    shape = tuple((layer.data[0] if getattr(layer, "multiscale", False) else layer.data).shape)
    try:
        return check_fit(model, in_channels, spatial_dims, layer.name, shape, bool(layer.rgb), lambda _q: False) == ""
    except ValueError:
        return False
