"""What Azure AI Speech's recognition and synthesis adapters share.

The resource settings (region, key or host), where each Azure region processes
data, and how SDK cancellations become :class:`ProviderError` s — one module for
``voicegw.asr.azure`` and ``voicegw.tts.azure``, so the two cannot drift apart
on where a tenant's audio or text is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import azure.cognitiveservices.speech as speechsdk

from voicegw.privacy.errors import ProviderError

__all__ = [
    "AZURE_REGION_LOCATIONS",
    "DEFAULT_LANGUAGES",
    "SUBPROCESSOR_ID",
    "TICKS_PER_SECOND",
    "AzureSpeechSettings",
    "cancellation_error",
    "location_of_region",
]

SUBPROCESSOR_ID = "azure"
TICKS_PER_SECOND = 10_000_000

#: Azure region name → ISO country of the datacentre (Microsoft's published
#: geographies). A region missing here has no declared location: the adapter
#: refuses to start rather than guess where callers' audio would go.
AZURE_REGION_LOCATIONS: dict[str, str] = {
    "southeastasia": "sg", "eastasia": "hk", "japaneast": "jp", "japanwest": "jp",
    "koreacentral": "kr", "centralindia": "in", "southindia": "in", "westindia": "in",
    "australiaeast": "au", "westeurope": "nl", "northeurope": "ie", "francecentral": "fr",
    "germanywestcentral": "de", "swedencentral": "se", "norwayeast": "no",
    "switzerlandnorth": "ch", "italynorth": "it", "polandcentral": "pl", "uksouth": "gb",
    "ukwest": "gb", "eastus": "us", "eastus2": "us", "westus": "us", "westus2": "us",
    "westus3": "us", "centralus": "us", "northcentralus": "us", "southcentralus": "us",
    "canadacentral": "ca", "brazilsouth": "br", "uaenorth": "ae", "qatarcentral": "qa",
    "southafricanorth": "za",
}  # fmt: skip

#: SDK cancellation code → (retryable, HTTP-like status) for failover and records.
_CANCELLATION_ERRORS: dict[speechsdk.CancellationErrorCode, tuple[bool, int | None]] = {
    speechsdk.CancellationErrorCode.AuthenticationFailure: (False, 401),
    speechsdk.CancellationErrorCode.BadRequest: (False, 400),
    speechsdk.CancellationErrorCode.Forbidden: (False, 403),
    speechsdk.CancellationErrorCode.TooManyRequests: (True, 429),
    speechsdk.CancellationErrorCode.ConnectionFailure: (True, None),
    speechsdk.CancellationErrorCode.ServiceTimeout: (True, 504),
    speechsdk.CancellationErrorCode.ServiceError: (True, 500),
    speechsdk.CancellationErrorCode.ServiceUnavailable: (True, 503),
    speechsdk.CancellationErrorCode.RuntimeError: (True, None),
}

DEFAULT_LANGUAGES = ("en", "zh-CN", "ms-MY", "ta-IN", "th-TH", "id-ID", "vi-VN", "hi-IN")


def location_of_region(region: str) -> str:
    """The country an Azure region processes in; unknown regions are an error."""
    try:
        return AZURE_REGION_LOCATIONS[region.lower().replace(" ", "")]
    except KeyError:
        raise ValueError(f"Azure region {region!r} has no declared location") from None


def cancellation_error(code: speechsdk.CancellationErrorCode) -> ProviderError:
    """The :class:`ProviderError` for an SDK cancellation (static message: details may
    quote request content)."""
    retryable, status = _CANCELLATION_ERRORS.get(code, (True, None))
    return ProviderError(f"Azure Speech cancelled: {code.name}", retryable=retryable, status=status)


@dataclass(frozen=True)
class AzureSpeechSettings:
    """Where and how to reach one Azure Speech resource.

    ``region`` is where the resource lives, and so where audio is processed, even
    when ``host`` overrides the address (a private endpoint, or a local stand-in
    for tests — the SDK needs no key then).
    """

    region: str
    key: str | None = field(default=None, repr=False)
    host: str | None = None
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    session_timeout: float = 10.0  # flush: longest wait for the service to finish

    def __post_init__(self) -> None:
        location_of_region(self.region)
        if self.key is None and self.host is None:
            raise ValueError("Azure Speech needs a key, or a host that does not")

    def speech_config(self) -> speechsdk.SpeechConfig:
        if self.host is not None:
            config = speechsdk.SpeechConfig(host=self.host, subscription=self.key)
        else:
            config = speechsdk.SpeechConfig(subscription=self.key, region=self.region)
        return config
