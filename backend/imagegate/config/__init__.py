"""Configuration: typed settings, where they come from, and how they are loaded.

``imagegate.backends.registry.load_settings`` (also ``imagegate.load_settings``) is the
loader to call: it is :func:`read_settings` with the provider registry as its kind table.
"""

from imagegate.config.load import (
    CONFIG_ENV,
    STATE_URL_ENV,
    KindTable,
    read_settings,
)
from imagegate.config.settings import (
    SERVICE_SECRETS,
    BackendSettings,
    HttpBackendSettings,
    ServiceSettings,
    Settings,
    Timeouts,
    check_pem,
    check_url,
    url_from_env,
)
from imagegate.config.sources import environment

__all__ = [
    "CONFIG_ENV",
    "SERVICE_SECRETS",
    "STATE_URL_ENV",
    "BackendSettings",
    "HttpBackendSettings",
    "KindTable",
    "ServiceSettings",
    "Settings",
    "Timeouts",
    "check_pem",
    "check_url",
    "environment",
    "read_settings",
    "url_from_env",
]
