"""sdd: the Search & Destroy response daemon."""

__version__ = "0.1.0"
