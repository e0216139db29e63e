"""What handlers can reach: the services, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from moorage.services.registry import RegistryService
from moorage.services.uploads import UploadService


@dataclass(frozen=True, slots=True)
class Services:
    registry: RegistryService
    uploads: UploadService
    max_page_size: int


SERVICES = web.AppKey("services", Services)
