"""Provider emulators (real loopback HTTP servers speaking each provider's wire protocol) and
fault injection, for imagegate's own tests and for its users' tests.

    async with serve_app(a1111.create_app()) as url: ...
    async with black_hole() as (host, port): ...   # a TLS handshake that never completes
    async with FaultProxy(url, mode="tls_blackhole") as proxy: ...   # switch proxy.mode later
"""

from imagegate.testing.blackhole import black_hole
from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs
from imagegate.testing.proxy import FaultProxy
from imagegate.testing.server import serve_app
from imagegate.testing.tls import LocalCA

__all__ = ["FaultProxy", "Knobs", "LocalCA", "black_hole", "make_image", "serve_app"]
