"""The Fine-tune dock's class names: the user's names for the classes, kept in the model card's
``class_names`` (what result layers' features and the Segment picker show)."""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container, LineEdit, PushButton

from ..card import class_names_text, parse_class_names, rename_classes
from ..model_files import write_card
from ..store import list_models
from ._choices import _card_of
from ._events import store_events


class ClassNames(Container):
    """``value: name`` pairs to edit, and *Save names* to write them into a trained model.

    Args:
        say: Shows one line in the dock's status line.
        refuse: Shows a refusal in the status line and a pop-up.
    """

    def __init__(self, say: Callable[[str], None], refuse: Callable[[str], None]) -> None:
        self._say, self._refuse = say, refuse
        self.edit = LineEdit(
            label="Class names",
            value="",
            tooltip="value: name pairs, e.g. 0: background, 1: nucleus. The new model (or, with 'Save names', "
            "the chosen trained model) keeps them; results name each object's class with them.",
        )
        self.edit.native.setPlaceholderText("e.g. 0: background, 1: nucleus")
        self.save_btn = PushButton(text="Save names", tooltip="Write these names into the chosen trained model.")
        super().__init__(widgets=[self.edit, self.save_btn], layout="horizontal")
        self.base: str | None = None

    def show_for(self, base: str | None) -> None:
        """Show the names of ``base`` (a trained model's folder; a new architecture: empty until trained)."""
        self.base = base
        card = None if base is None else _card_of(base)
        self.edit.value = class_names_text(card) if card is not None else ""
        self.save_btn.enabled = card is not None and not _is_builtin(base)

    def names(self) -> dict[int, str] | None:
        """The names typed, by label value (``None`` when empty).

        Raises:
            ValueError: a part that is not ``value: name``.
        """
        return parse_class_names(self.edit.value) or None

    def save(self) -> bool:
        """Write the edited names into the chosen trained model's card."""
        base = self.base
        card = None if base is None else _card_of(base)
        if base is None or card is None or _is_builtin(base):
            self._refuse("Pick one of your trained models to name its classes (a new or built-in one: train first).")
            return False
        try:
            rename_classes(card, self.names() or {})
        except ValueError as err:
            self._refuse(str(err))
            return False
        write_card(base, card)
        store_events.models_changed.emit(base)
        self._say(f"Class names of '{card.display_name}': {', '.join(card.class_names)}.")
        return True


def _is_builtin(path: str | None) -> bool:
    return any(m.builtin and str(m.path) == path for m in list_models())
