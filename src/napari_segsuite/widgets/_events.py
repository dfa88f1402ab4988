"""Signals shared between the plugin's widgets (no Qt: psygnal)."""

import contextlib

from psygnal import Signal


class StoreEvents:
    """``models_changed(path)`` fires when a widget saves a model to the store."""

    models_changed = Signal(str)


store_events = StoreEvents()


def on_models_changed(widget, callback) -> None:
    """Connect ``callback`` to :attr:`StoreEvents.models_changed` for as long as ``widget``'s Qt object lives."""
    store_events.models_changed.connect(callback)

    def _drop(*_args) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            store_events.models_changed.disconnect(callback)

    widget.native.destroyed.connect(_drop)
