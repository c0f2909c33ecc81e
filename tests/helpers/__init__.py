"""Helpers shared by several test modules: plain functions and constants, no fixtures (those live in
tests/conftest.py). Test modules import from here, never from each other or from conftest."""
