"""modelyard: ship a trained model cheaply and safely."""

__version__ = "0.1.0"

__all__ = ["__version__"]
