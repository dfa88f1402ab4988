"""Signals shared between the plugin's widgets (no Qt: psygnal)."""

from psygnal import Signal


class StoreEvents:
    """``models_changed(path)`` fires when a widget saves a model to the store."""

    models_changed = Signal(str)


store_events = StoreEvents()
