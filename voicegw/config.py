"""Server configuration: one TOML file plus ``VOICEGW_*`` environment overrides.

Embedded defaults need no file at all: SQLite and keys under ``./var/``, SIP on
127.0.0.1:5060 (UDP and TCP), HTTP on 127.0.0.1:8080. A bad value stops start-up
with a :class:`ConfigError` naming the key, the file and what is allowed.

Environment overrides use ``__`` between levels, e.g. ``VOICEGW_HTTP__PORT=9090``
or ``VOICEGW_DATABASE__URL=postgresql+asyncpg://...``; they win over the file.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "VOICEGW_"
CONFIG_ENV = "VOICEGW_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = None


class SipConfig(_Section):
    host: str = "127.0.0.1"
    #: The operator's SIP domain: a tenant's realm (and users' AOR host) is <tenant>.<domain>.
    domain: str = Field(
        default="voicegw.local", pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
    )
    #: Digest algorithms challenged with, strongest first. Some deployed phones give
    #: up on any 401 naming an algorithm they lack (baresip 1.0 and SHA-256): a fleet
    #: of those needs ["MD5"].
    digest_algorithms: tuple[Literal["SHA-256", "MD5"], ...] = Field(
        default=("SHA-256", "MD5"), min_length=1
    )
    udp_port: int | None = Field(default=5060, ge=1, le=65535)
    tcp_port: int | None = Field(default=5060, ge=1, le=65535)
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    #: RFC 3261 timer base values, in seconds.
    t1: float = Field(default=0.5, gt=0, le=10)
    t2: float = Field(default=4.0, gt=0, le=60)
    t4: float = Field(default=5.0, gt=0, le=60)
    max_message_bytes: int = Field(default=65536, ge=1024, le=1_048_576)

    @model_validator(mode="after")
    def _tls_needs_files(self) -> SipConfig:
        if self.tls_port is not None and (
            self.tls_certificate is None or self.tls_private_key is None
        ):
            raise ValueError("tls_port needs tls_certificate and tls_private_key")
        if self.t2 < self.t1:
            raise ValueError("t2 must be at least t1")
        return self


class MediaConfig(_Section):
    #: The echo test service's user part: sip:<echo_user>@<tenant realm> (and tenant numbers,
    #: until routing to queues lands) answer and send the caller's audio back.
    echo_user: str = Field(default="echo", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    #: Calls longer than this are ended by the gateway (None: no limit).
    max_call_seconds: float | None = Field(default=14400.0, gt=0)
    rtp_port_min: int = Field(default=20000, ge=1024, le=65534)
    rtp_port_max: int = Field(default=29999, ge=1025, le=65535)
    #: Address written into SDP; defaults to the SIP host.
    advertised_address: str | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> MediaConfig:
        if self.rtp_port_max <= self.rtp_port_min:
            raise ValueError("rtp_port_max must be greater than rtp_port_min")
        return self


class IceServerConfig(_Section):
    urls: tuple[str, ...] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


class WebRtcSection(_Section):
    #: STUN/TURN servers handed to browsers and to our ICE agent. Empty by default:
    #: nothing is contacted that the operator did not name.
    ice_servers: tuple[IceServerConfig, ...] = ()
    #: Addresses offered as host candidates (None: the node's interfaces).
    host_addresses: tuple[str, ...] | None = ("127.0.0.1",)
    codecs: tuple[Literal["opus", "PCMU"], ...] = ("opus", "PCMU")
    #: Seconds an agent stays in wrap-up after a call.
    wrap_up_seconds: float = Field(default=30.0, ge=0, le=3600)


_SKILL = r"^[a-z0-9][a-z0-9_.-]{0,31}$"


class QueueConfig(_Section):
    """An agent queue of one tenant (``[[queues]]``); see :mod:`voicegw.calls.queues`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    #: Dialled numbers (E.164, the tenant's own) whose calls join this queue.
    numbers: tuple[Annotated[str, Field(pattern=r"^\+[1-9][0-9]{5,14}$")], ...] = ()
    #: An agent must have every one of these skills to be rung.
    skills: tuple[Annotated[str, Field(pattern=_SKILL)], ...] = Field(default=(), max_length=16)
    ring_timeout: float = Field(default=15.0, gt=0, le=300)
    max_wait: float = Field(default=120.0, gt=0, le=3600)
    #: Seconds before an agent who declined or missed a call is offered it again.
    retry_after: float = Field(default=30.0, ge=0, le=3600)
    #: What a waiting caller hears: the gateway's hold chime, or ringback (call unanswered).
    music: Literal["hold", "ringback"] = "hold"
    #: After max_wait: another queue of the same tenant, else the final status below.
    overflow_queue: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    overflow_status: int = Field(default=480, ge=400, le=699)


def _queues_valid(queues: tuple[QueueConfig, ...]) -> None:
    names = {(q.tenant, q.name) for q in queues}
    if len(names) != len(queues):
        raise ValueError("queue names must be unique per tenant")
    numbers = [(q.tenant, n) for q in queues for n in q.numbers]
    if len(set(numbers)) != len(numbers):
        raise ValueError("a number can be in one queue of a tenant only")
    for queue in queues:
        onward = queue.overflow_queue
        known = onward in (None, "default") or (queue.tenant, onward) in names
        if not known or onward == queue.name:
            raise ValueError(f"queue {queue.name}: overflow_queue {onward} is not defined")


class DatabaseConfig(_Section):
    #: SQLAlchemy async URL; None means SQLite at ``<data_dir>/voicegw.db``.
    url: str | None = None
    echo: bool = False


class StorageConfig(_Section):
    data_dir: Path = Path("var")
    #: Recordings land under ``<recordings_root>/<region>/``.
    recordings_root: Path | None = None
    key_dir: Path | None = None


class PrivacyConfig(_Section):
    #: The sub-processor list published to tenants (what each vendor is, where it processes).
    subprocessors_file: Path = Path("config/subprocessors.toml")


class RetentionConfig(_Section):
    #: How often `serve` sweeps expired recordings, transcripts and SIP bindings (seconds).
    sweep_interval_seconds: float = Field(default=3600.0, ge=10, le=86400)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class TrunkOutboundConfig(_Section):
    """Where calls through a trunk go, and the credentials its provider challenges for."""

    host: str = Field(pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}$")
    port: int = Field(default=5060, ge=1, le=65535)
    transport: Literal["UDP", "TCP", "TLS"] = "UDP"
    username: str | None = Field(default=None, min_length=1, max_length=128)
    #: Never logged; repr and errors show it as ``**********``.
    password: SecretStr | None = None
    #: The only realm whose challenges get the credentials (with the trunk's host).
    realm: str | None = Field(default=None, min_length=1, max_length=253)

    @model_validator(mode="after")
    def _credentials_complete(self) -> TrunkOutboundConfig:
        given = [self.username is not None, self.password is not None, self.realm is not None]
        if any(given) and not all(given):
            raise ValueError("outbound username, password and realm go together")
        return self


class TrunkConfig(_Section):
    """A carrier/PBX trunk of one tenant (``[[trunks]]``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    #: "digest": the trunk authenticates with the tenant's SIP credential ``username``;
    #: "allow_list": INVITEs from ``sources`` (CIDRs) are the trunk's, unchallenged.
    inbound_auth: Literal["digest", "allow_list"]
    username: str | None = Field(default=None, min_length=1, max_length=128)
    sources: tuple[IPvAnyNetwork, ...] = ()
    outbound: TrunkOutboundConfig | None = None

    @model_validator(mode="after")
    def _inbound_complete(self) -> TrunkConfig:
        if self.inbound_auth == "allow_list" and (not self.sources or self.username):
            raise ValueError("inbound_auth allow_list needs sources (CIDRs) and no username")
        if self.inbound_auth == "digest" and (self.username is None or self.sources):
            raise ValueError("inbound_auth digest needs username (a SIP credential), no sources")
        for network in self.sources:
            if network.prefixlen < _NARROWEST_SOURCE_PREFIX[network.version]:
                # Unchallenged calls from 0.0.0.0/0 would make every caller this tenant.
                raise ValueError(f"source {network} is too wide (at most an IPv4 /16, IPv6 /48)")
        return self


_NARROWEST_SOURCE_PREFIX = {4: 16, 6: 48}


def _trunks_distinct(trunks: tuple[TrunkConfig, ...]) -> None:
    names = [t.name for t in trunks]
    if len(set(names)) != len(names):
        raise ValueError("trunk names must be unique")
    # One source address must name one trunk, or its calls' tenant would be ambiguous.
    seen = [(network, trunk.name) for trunk in trunks for network in trunk.sources]
    for index, (network, name) in enumerate(seen):
        for other, other_name in seen[index + 1 :]:
            same_family = network.version == other.version
            if other_name != name and same_family and network.overlaps(other):
                raise ValueError(f"trunks {name} and {other_name} have overlapping sources")


_NODE_NAME = r"^[A-Za-z0-9._-]{1,64}$"


def default_node_name() -> str:
    """The host name, cut to what ``node_name`` allows (``voicegw-1`` if nothing is left)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    return name or "voicegw-1"


class Settings(BaseSettings):
    """Validated server configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    #: This node's id among those sharing the database (recordings name their writer, and
    #: start-up recovery touches only this node's): the host name unless configured.
    node_name: str = Field(default_factory=default_node_name, pattern=_NODE_NAME)
    region: str = Field(default="sg", pattern=r"^[a-z]{2,8}$")
    http: HttpConfig = HttpConfig()
    sip: SipConfig = SipConfig()
    media: MediaConfig = MediaConfig()
    webrtc: WebRtcSection = WebRtcSection()
    database: DatabaseConfig = DatabaseConfig()
    storage: StorageConfig = StorageConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    retention: RetentionConfig = RetentionConfig()
    logging: LoggingConfig = LoggingConfig()
    #: Carrier/PBX trunks (``[[trunks]]``): see :mod:`voicegw.calls.trunks`.
    trunks: tuple[TrunkConfig, ...] = ()
    #: Agent queues with skills (``[[queues]]``); a tenant's other calls use ``default``.
    queues: tuple[QueueConfig, ...] = ()

    @model_validator(mode="after")
    def _trunks_valid(self) -> Settings:
        _trunks_distinct(self.trunks)
        _queues_valid(self.queues)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: the file arrives as init values.
        return (env_settings, init_settings)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.storage.data_dir / 'voicegw.db'}"

    @property
    def recordings_root(self) -> Path:
        return self.storage.recordings_root or self.storage.data_dir / "recordings"

    @property
    def key_dir(self) -> Path:
        return self.storage.key_dir or self.storage.data_dir / "keys"


class ConfigError(Exception):
    """A configuration problem an operator must fix before the gateway starts."""


#: Keys whose values an error message must never echo.
SECRET_KEYS = frozenset({"password", "credential"})


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against config/voicegw.example.toml)"
    ctx = error.get("ctx") or {}
    allowed = ""
    if "expected" in ctx:
        allowed = f"; allowed: {ctx['expected']}"
    elif "pattern" in ctx:
        allowed = f"; must match {ctx['pattern']}"
    given = error.get("input")
    secret = error["loc"] and str(error["loc"][-1]) in SECRET_KEYS
    shown = "" if isinstance(given, dict) or secret else f" (got {given!r})"
    return f"{key}: {error['msg']}{allowed}{shown}"


def load_settings(path: Path | str | None = None) -> Settings:
    """Load and validate settings from ``path`` (or ``$VOICEGW_CONFIG``) and the environment."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    source = str(path) if path is not None else "embedded defaults"
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
        raise ConfigError(
            f"invalid configuration in {source} (or VOICEGW_* environment):\n  {problems}"
        ) from None
