"""The package version, alone in its module: the server (``/v2`` metadata, the OpenAPI document) depends on
this module rather than on the public surface in ``modelyard/__init__.py``, which re-exports it."""

__version__ = "0.1.0"
