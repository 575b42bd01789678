"""Health: is a backend fit to take traffic? Pure state machines; probes live at the edge."""

from .passive import PassiveHealth

__all__ = ["PassiveHealth"]
