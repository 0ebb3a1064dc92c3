"""One family of user-facing errors: every message says what is wrong, with the value, and what to do.

Each kind also derives from the builtin it replaces (ValueError / RuntimeError), so callers that
catch those keep working.
"""

from __future__ import annotations


class DTIError(Exception):
    """Base of every error the pack shows a user."""


class InputError(DTIError, ValueError):
    """A node input or setting that cannot work (checked before any expensive work)."""


class UnsupportedModelError(InputError):
    """A CLIP or MODEL this pack cannot train or encode for; the message lists what it supports."""


class ConceptMismatchError(InputError):
    """A concept or file that does not fit the connected text encoder."""


class ConceptError(DTIError, ValueError):
    """Rows that cannot form a concept (all-zero, non-finite, mismatched shapes)."""


class EmbeddingFileError(DTIError, ValueError):
    """A file that cannot be read or written as an embedding; the message names file and problem."""


class CheckpointError(DTIError, ValueError):
    """A training checkpoint that cannot be read or written."""


class SaveError(EmbeddingFileError):
    """A file that could not be written; the message names the folder, the remedy and where the vectors were kept."""


class BlendError(DTIError, ValueError):
    """Concepts that cannot be blended as asked."""


class TrainingError(DTIError, RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class TrainingDiverged(TrainingError):
    """Loss or gradients stayed non-finite; the last good vectors were kept."""


class MissingPlaceholderError(TrainingError):
    """A prompt that never mentions the concept."""
