"""The OpenAI-compatible HTTP API.

``app.py`` (create_app: the aiohttp app and its lifetime), ``state.py`` (options, state, typed
keys), ``middleware.py``, ``routes.py``, ``wire.py`` (the OpenAI wire shape, pure),
``errors.py`` (every failure as OpenAI's error JSON), ``openapi.py``, ``metrics.py`` and
``run.py`` (``imagegate serve``, ``running()``).
"""

from imagegate.server.app import create_app
from imagegate.server.run import running, serve
from imagegate.server.state import ServerOptions

__all__ = ["ServerOptions", "create_app", "running", "serve"]
