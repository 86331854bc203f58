"""Generators for the documentation site's reference pages, run by mkdocs (scripts/docs_hooks.py)."""
