"""gliomatch: personalize brain-tumor growth models by database query."""

__version__ = "0.1.0"
