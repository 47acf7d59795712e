"""The version of pfm, in a module of its own so that the flow files can record it without importing the package."""

__version__ = "0.1.0"
