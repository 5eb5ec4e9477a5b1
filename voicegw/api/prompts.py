"""Prompt audio uploads: validated WAV files a tenant's consent notice can point at."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from voicegw.api.admin import ADMINS, READERS, principal, scoped_tenant
from voicegw.api.context import PROMPTS, SESSIONS
from voicegw.api.errors import ApiError, not_found
from voicegw.store import audit
from voicegw.store.prompt_files import MAX_BYTES, PromptError


async def upload_prompt(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if request.content_length is not None and request.content_length > MAX_BYTES:
        raise ApiError(413, "payload_too_large", f"prompt files are limited to {MAX_BYTES} bytes")
    data = await request.read()
    library = request.app[PROMPTS]
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        try:
            meta = await asyncio.to_thread(library.save, tenant.id, name, data)
        except PromptError as exc:
            raise ApiError(400, "invalid_field", f"prompt: {exc}", "body") from None
        await audit.append(
            session,
            actor=principal(request).actor,
            tenant_id=tenant.id,
            action="tenant.prompt.upload",
            target=f"tenant/{tenant.id}/prompts/{name}",
            details={"sha256": meta.sha256, "duration_seconds": meta.duration_seconds},
        )
    return web.json_response(dataclasses.asdict(meta), status=201)


async def list_prompts(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
    files = await asyncio.to_thread(request.app[PROMPTS].list, tenant.id)
    return web.json_response({"prompts": [dataclasses.asdict(f) for f in files]})


async def delete_prompt(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    async with request.app[SESSIONS]() as session, session.begin():
        tenant = await scoped_tenant(request, session, ADMINS)
        try:
            removed = request.app[PROMPTS].delete(tenant.id, name)
        except PromptError as exc:
            raise ApiError(400, "invalid_field", str(exc), "name") from None
        if not removed:
            raise not_found(f"prompt {name}")
        await audit.append(
            session,
            actor=principal(request).actor,
            tenant_id=tenant.id,
            action="tenant.prompt.delete",
            target=f"tenant/{tenant.id}/prompts/{name}",
        )
    return web.json_response({})
