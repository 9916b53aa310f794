"""thingssim: simulation, experiments and the command line around :mod:`runtime`."""

from runtime import __version__

__all__ = ["__version__"]
