"""imagegate: one async interface to many image-generation providers, with failover.

    async with ImageService.from_config() as service:
        result = await service.generate(ImageRequest(prompt="a lighthouse at dusk"))
        async for event in service.stream(ImageRequest(prompt="a fox")):  # progress as it comes
            print(event.type)
"""

from imagegate.backends.registry import load_settings
from imagegate.errors import (
    AllBackendsFailed,
    AuthFailed,
    BackendError,
    BadResponse,
    ConfigError,
    ConnectFailed,
    ContentFiltered,
    GenerationTimeout,
    HandshakeTimeout,
    ImageGateError,
    InvalidRequest,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.events import (
    CancelledEvent,
    CompletedEvent,
    Event,
    FailedEvent,
    FailoverEvent,
    PreviewEvent,
    ProgressEvent,
    QueuedEvent,
    StartedEvent,
)
from imagegate.models import (
    Attempt,
    BackendHealth,
    GeneratedImage,
    ImageFormat,
    ImageRequest,
    ImageResult,
)
from imagegate.routing import ImageService
from imagegate.store import ImageStore
from imagegate.version import __version__

__all__ = [
    "AllBackendsFailed",
    "Attempt",
    "AuthFailed",
    "BackendError",
    "BackendHealth",
    "BadResponse",
    "CancelledEvent",
    "CompletedEvent",
    "ConfigError",
    "ConnectFailed",
    "ContentFiltered",
    "Event",
    "FailedEvent",
    "FailoverEvent",
    "GeneratedImage",
    "GenerationTimeout",
    "HandshakeTimeout",
    "ImageFormat",
    "ImageGateError",
    "ImageRequest",
    "ImageResult",
    "ImageService",
    "ImageStore",
    "InvalidRequest",
    "PreviewEvent",
    "ProgressEvent",
    "QueuedEvent",
    "QuotaExhausted",
    "RateLimited",
    "Rejected",
    "ServerError",
    "StartedEvent",
    "Unavailable",
    "__version__",
    "load_settings",
]
