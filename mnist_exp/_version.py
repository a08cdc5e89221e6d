"""The release number: one per release (CHANGELOG.md), read by the packaging too."""

__version__ = "0.10.0"
