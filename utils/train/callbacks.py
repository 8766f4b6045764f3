"""Observers of training events: how tests and tools watch a run without code of their own in it.

A run's :class:`Observers` are given to it by its caller (``run_stage1(settings, observers)``) and
carried in its run context (``ctx.observers``); by default there are none. Training code notifies
them at named points; with no observer nothing is computed or written.

Events (every one carries ``rank``, ``stage`` = "stage1" | "stage2", ``phase`` = "intra" | "joint" |
None and ``epoch``, 1-based, or None outside the epochs):

``labels``       pseudo-labels of an epoch (stage 1: per modality and joint, with the initial memories)
                 or the matched labels (stage 2); ``values()`` gives ``{name: array}``
``clean``        stage 2's clean probabilities of an epoch; ``values()`` gives ``{"v1", "v2", "ir"}``
``epoch_end``    after the end-of-epoch buffer sync; ``values()`` gives the model digest (and stage 2's
                 prototypes)
``checkpoint``   a checkpoint was written; ``path`` names it
"""
from __future__ import annotations

from typing import Callable, Iterable, List

Observer = Callable[..., None]  # observer(event: str, **info)


class Observers:
    """An ordered list of observers; :meth:`notify` calls each with the event and its information."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self._observers: List[Observer] = list(observers)

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)

    def remove(self, observer: Observer) -> None:
        self._observers.remove(observer)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def notify(self, event: str, **info) -> None:
        """Tell every observer; ``info["values"]``, when given, is a zero-argument callable, so what
        only an observer needs (model digests, copies to the host) is computed only when observed."""
        for observer in list(self._observers):
            observer(event, **info)
