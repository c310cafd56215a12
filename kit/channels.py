"""The channel registry: one ChannelSpec per messaging channel, asked by every layer that needs to know channels.

A channel is what a campaign step sends on (sms, email, push, phone). Its spec says which contact datum of the
customer it needs, whose consent governs it, the parts its templates have, whether quiet hours hold its marketing
back, the key its frequency cap counts under and the default cap, what a message costs, and which sender
providers can carry it (the settings pick one by `provider_setting`). The sender factories themselves live with
delivery (`campaigns.delivery.channels.PROVIDERS`), keyed by provider name, so this registry stays below every
package that asks it: crm (consent channels), campaigns' spec, planner, rendering, quiet hours, caps and dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator


@dataclass(frozen=True)
class ChannelSpec:
    """One messaging channel and every rule that depends on which channel a message goes through."""

    name: str
    contact_field: str  # the customer's contact datum it needs: "phone", "email" or "push" (push tokens)
    parts: tuple[str, ...]  # the parts its templates may have
    required_parts: tuple[str, ...]  # the parts every template of it must have
    consent_channel: str = ""  # whose consent governs it; its own name when empty
    quiet_hours: bool = False  # marketing on it waits out the customer's quiet hours (by default)
    cap_key: str = ""  # the frequency cap it counts under; its own name when empty
    default_cap: tuple[int, int] | None = None  # (limit, window days) until the guard rails say otherwise
    unit_cost: float = 0.0  # what one message costs the shop (dry-run estimates)
    providers: tuple[str, ...] = ("console",)  # sender providers that can carry it; the first is the default
    provider_setting: str | None = None  # the Settings field that picks its provider (None: the default only)
    segments: bool = False  # its text is billed by segment (SMS): length facts, and dry-runs multiply the cost
    unsubscribe_parts: tuple[str, ...] = ()  # parts that must carry the unsubscribe link (email)
    opt_out_text: bool = False  # its marketing text must carry the opt-out words (SMS: 回T退订 / Reply STOP)

    @property
    def consent(self) -> str:
        """The consent channel that governs this channel."""
        return self.consent_channel or self.name

    @property
    def cap(self) -> str:
        """The key its frequency cap counts under."""
        return self.cap_key or self.name


class ChannelRegistry:
    """The channels there are, in registration order (built-ins first); a channel is registered once."""

    def __init__(self, specs: tuple[ChannelSpec, ...] = ()) -> None:
        self._specs: dict[str, ChannelSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ChannelSpec) -> ChannelSpec:
        """Add a channel; a second channel of the same name is refused."""
        if spec.name in self._specs:
            raise ValueError(f"channel '{spec.name}' is registered already")
        self._specs[spec.name] = spec
        return spec

    def unregister(self, name: str) -> None:
        """Remove a channel (a test's throw-away channel)."""
        self._specs.pop(name, None)

    def get(self, name: str) -> ChannelSpec:
        """The spec of a channel, or KeyError."""
        return self._specs[name]

    def names(self) -> tuple[str, ...]:
        """Every channel's name, built-ins first."""
        return tuple(self._specs)

    def all(self) -> tuple[ChannelSpec, ...]:
        """Every channel's spec."""
        return tuple(self._specs.values())

    def consent_channels(self) -> tuple[str, ...]:
        """The channels consent is recorded for."""
        return tuple(dict.fromkeys(spec.consent for spec in self._specs.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._specs


BUILT_IN = (
    ChannelSpec("sms", contact_field="phone", parts=("body",), required_parts=("body",), quiet_hours=True,
                default_cap=(2, 30), unit_cost=0.05, providers=("console", "twilio"), provider_setting="sms_provider",
                segments=True, opt_out_text=True),
    ChannelSpec("email", contact_field="email", parts=("subject", "text", "html"),
                required_parts=("subject", "text", "html"), unsubscribe_parts=("text", "html"), default_cap=(4, 30),
                unit_cost=0.001,
                providers=("console", "sendgrid"), provider_setting="email_provider"),
    ChannelSpec("push", contact_field="push", parts=("title", "body"), required_parts=("body",), quiet_hours=True,
                default_cap=(8, 30), unit_cost=0.0, providers=("console", "fcm"), provider_setting="push_provider"),
    # A call by an agent: the phone channel becomes call tasks, never an automatic message.
    ChannelSpec("phone", contact_field="phone", parts=("body",), required_parts=("body",), default_cap=(1, 90),
                unit_cost=2.0, providers=("tasks",)),
)
CHANNELS = ChannelRegistry(BUILT_IN)


def default_caps() -> dict[str, tuple[int, int]]:
    """The default frequency caps, (limit, window days) per cap key: the one definition the environment's seed, the
    guard-rail settings and the planner's defaults start from."""
    return {spec.cap: spec.default_cap for spec in CHANNELS.all() if spec.default_cap is not None}


def quiet_hours_channels() -> tuple[str, ...]:
    """The channels whose marketing waits out quiet hours by default."""
    return tuple(spec.name for spec in CHANNELS.all() if spec.quiet_hours)


def unit_costs() -> dict[str, float]:
    """What one message costs per channel."""
    return {spec.name: spec.unit_cost for spec in CHANNELS.all()}


def _known_channel(name: str) -> str:
    if name not in CHANNELS:
        raise ValueError(f"unknown channel '{name}' (known: {', '.join(CHANNELS.names())})")
    return name


def _known_consent_channel(name: str) -> str:
    if name not in CHANNELS.consent_channels():
        raise ValueError(f"unknown channel '{name}' (known: {', '.join(CHANNELS.consent_channels())})")
    return name


# Channel names as pydantic fields: checked against the registry when a document is validated, so a channel
# registered later counts.
ChannelName = Annotated[str, AfterValidator(_known_channel)]
ConsentChannelName = Annotated[str, AfterValidator(_known_consent_channel)]
