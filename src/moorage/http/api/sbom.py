"""SBOM downloads: an image's bill of materials as CycloneDX 1.6 or SPDX 2.3 JSON.

The image must have been scanned (the SBOM is rendered from the scan's stored inventory):
404 when it never was or its scan failed, 409 while the scan is pending or running. See
`moorage.services.supply_chain.sbom` and docs/scanning.md.
"""

from __future__ import annotations

from pydantic import Field

from moorage.domain.access import Action
from moorage.domain.digest import Digest
from moorage.http.access import REPOSITORY, Permission, Scope
from moorage.http.api.framework import ApiRoute, Call, Download, QueryModel
from moorage.http.errors import ApiProblem
from moorage.scanning.sbom import SbomFormat
from moorage.services.supply_chain.sbom import SbomUnavailableError

SBOMS = "sboms"
SBOM_PATH = "/api/v1/repositories/{name:.+}/manifests/{digest:[^/]+}/sbom"
READ_SCAN = Permission(Scope.REPOSITORY, Action.READ_SCAN)


class SbomQuery(QueryModel):
    format: SbomFormat = Field(
        SbomFormat.CYCLONEDX, description="cyclonedx (CycloneDX 1.6) or spdx (SPDX 2.3)"
    )
    vulnerabilities: bool = Field(
        True, description="CycloneDX only: list the scan's findings as vulnerabilities"
    )


async def get_sbom(call: Call) -> Download:
    query = call.query(SbomQuery)
    digest = Digest.parse(call.param("digest"))
    try:
        subject, document = await call.iam.sboms.export(
            call.request[REPOSITORY],
            digest,
            query.format,
            vulnerabilities=query.vulnerabilities,
        )
    except SbomUnavailableError as error:
        raise ApiProblem(error.status, str(error)) from None
    return Download(
        document.body, document.media_type, subject.file_stem + query.format.file_suffix
    )


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        SBOM_PATH,
        get_sbom,
        READ_SCAN,
        "The image's software bill of materials (CycloneDX 1.6 or SPDX 2.3 JSON)",
        SBOMS,
        query=SbomQuery,
        errors=(409,),
        produces=tuple(sbom_format.media_type for sbom_format in SbomFormat),
    ),
)
