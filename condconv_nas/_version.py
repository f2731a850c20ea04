"""The package version, in one place (imported by the package face, studies and exports)."""

__version__ = "0.1.0"
