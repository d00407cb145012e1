"""Dispatch: where a detection is decided — matching, the commit path, the scheduler."""
