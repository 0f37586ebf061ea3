"""Errors that mean the user asked for something wrong. The CLI prints them in one line, no traceback."""

from __future__ import annotations


class FoveaError(Exception):
    """Base class: a message that says what was wrong and how to fix it."""


class ConfigError(FoveaError, ValueError):
    """A config field has a bad value, or a recipe or field name is unknown."""


class CheckpointError(FoveaError):
    """A checkpoint is missing, corrupt, truncated, a pickle, or belongs to another model."""


class RunError(FoveaError):
    """A run folder cannot be created or resumed."""


class UsageError(FoveaError):
    """The command line is malformed (a missing or conflicting argument)."""
