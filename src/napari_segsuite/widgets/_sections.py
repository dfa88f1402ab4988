"""Collapsible sections for a dock: a title button that shows or hides what is under it."""

from __future__ import annotations

from typing import Any


def collapsible(title: str, widget: Any, expanded: bool = True) -> Any:
    """A ``QWidget`` holding a toggle button titled ``title`` over ``widget`` (a ``QWidget`` or a
    magicgui widget); clicking the title folds the section, so several panels share a small screen."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy, QToolButton, QVBoxLayout, QWidget

    inner = getattr(widget, "native", widget)
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(2)
    head = QToolButton()
    head.setText(title)
    head.setCheckable(True)
    head.setChecked(expanded)
    head.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    head.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    head.setStyleSheet("QToolButton { border: none; font-weight: bold; text-align: left; }")

    def show(on: bool) -> None:
        head.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        inner.setVisible(on)

    head.toggled.connect(show)
    layout.addWidget(head)
    layout.addWidget(inner)
    show(expanded)
    box.setObjectName(f"section: {title}")
    box.head = head  # type: ignore[attr-defined]  # tests fold and unfold it
    return box
