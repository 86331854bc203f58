"""The package version, kept in one place for pyproject.toml and poolwatch_build_info."""

__version__ = "0.1.0"
