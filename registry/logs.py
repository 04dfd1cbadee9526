"""Process-wide logging set-up for ``registry serve``."""

from __future__ import annotations

import logging

from registry.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=TEXT_FORMAT, force=True)
