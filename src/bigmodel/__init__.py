"""bigmodel: one command from a YAML config to a trained, evaluated, explained model."""

__version__ = "0.1.0"
