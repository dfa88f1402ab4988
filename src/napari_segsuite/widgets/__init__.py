"""Thin napari dock widgets over the Qt-free engine. They check input, run the engine in napari
thread workers, and turn its progress into a bar, a status line and a Cancel button."""
