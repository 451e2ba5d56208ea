"""The package's version, in a module of its own: any layer can read it without importing the façade
(``unmask/__init__``), which imports the engine and the registry."""

__version__ = "0.2.0"
