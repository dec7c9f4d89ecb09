"""Moved to ``plmkit.sites`` (the injection sites belong to the core); kept so old imports work."""

from plmkit.sites import (  # noqa: F401
    BLOCK_ATTR,
    SITE_STYLES,
    FeedForwardSite,
    UnsupportedBackboneError,
    find_feed_forward_sites,
    install_block,
    remove_block,
)
