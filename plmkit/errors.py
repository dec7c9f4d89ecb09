"""The one error base the CLI turns into a single line.

Everything a user can fix (a bad flag, a missing file, a damaged cache entry, an adapter that does
not fit the backbone) raises a subclass of ``PlmkitError`` with the fix in its message; the CLI prints
``error: <message>`` and exits with 2. Anything else is a bug and keeps its traceback.

``PlmkitError`` subclasses ``ValueError`` so code written against the earlier ``ValueError``
contract keeps catching these errors.
"""

from __future__ import annotations


class PlmkitError(ValueError):
    """A problem the user can fix; the message names it and the fix."""


class ConfigError(PlmkitError):
    """A setting (config field or CLI flag) that cannot work."""


class TrainerConfigError(ConfigError):
    """A trainer setting that cannot work, with the fix in the message."""
