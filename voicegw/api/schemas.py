"""Request bodies of the admin API (unknown fields are errors, not silently dropped)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from voicegw.store.tokens import Role
from voicegw.tenant_settings import RecordingMode, TenantSettings


class RequestBody(BaseModel):
    """Base of every JSON request body: an unknown field is a 400 naming it, not ignored."""

    model_config = ConfigDict(extra="forbid")


class TenantCreate(RequestBody):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$", description="Stable tenant id (slug)")
    name: str = Field(min_length=1, max_length=200)
    settings: TenantSettings = TenantSettings()


class SettingsPatch(RequestBody):
    """Any subset of TenantSettings; nested objects merge."""

    model_config = ConfigDict(extra="allow")


class NumberCreate(RequestBody):
    number: str = Field(min_length=3, max_length=32, description="E.164, e.g. +6561234567")
    label: str | None = Field(default=None, max_length=100)
    recording_mode: RecordingMode | None = None


class AgentCreate(RequestBody):
    username: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    display_name: str = Field(min_length=1, max_length=200)
    skills: list[str] = Field(default_factory=list, max_length=32)


class TokenCreate(RequestBody):
    role: Role
    tenant_id: str | None = None
    agent_id: int | None = Field(default=None, ge=1)
    label: str | None = Field(default=None, max_length=100)


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")
