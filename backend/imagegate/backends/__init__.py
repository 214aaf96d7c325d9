"""One module per provider, all behind one contract.

``base.py`` is the contract (:class:`ImageBackend`); ``http.py`` the HTTP machinery the HTTP
backends share; ``images.py`` the image checks; ``registry.py`` the one row per kind that
config, the emulators and diagnose derive from. See ADDING_A_BACKEND.md to add one.
"""

from imagegate.backends.base import ImageBackend
from imagegate.backends.http import HttpBackend

__all__ = ["HttpBackend", "ImageBackend"]
