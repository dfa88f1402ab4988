"""What both dock widgets share: the progress row, the worker wiring and error reporting."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import notification_manager, show_error

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


class RunControls(Container):
    """A start button, a Cancel button, a progress bar and a status line, driving one worker at a time."""

    def __init__(self, start_text: str, on_start: Callable[[], Any]) -> None:
        self.start_btn = PushButton(text=start_text)
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        super().__init__(
            widgets=[
                Container(widgets=[self.start_btn, self.cancel_btn], layout="horizontal", labels=False),
                self.bar,
                self.status,
            ],
            labels=False,
        )
        self.worker: Any = None
        self._t0 = time.monotonic()
        self.start_btn.changed.connect(lambda _=None: on_start())

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
        worker = create_worker(work, *args, _start_thread=False)
        worker.yielded.connect(on_yield)
        worker.returned.connect(on_done)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self.status.__setattr__("value", "Cancelled."))
        worker.finished.connect(self._on_finished)
        self.cancel_btn.changed.disconnect()
        self.cancel_btn.changed.connect(lambda _=None: self._cancel(on_cancel))
        self.worker = worker
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

    def _cancel(self, on_cancel: Callable[[], None] | None) -> None:
        self.status.value = "Cancelling..."
        self.cancel_btn.enabled = False
        if on_cancel is not None:
            on_cancel()
        elif self.worker is not None:
            self.worker.quit()

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, KNOWN_ERRORS):
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
