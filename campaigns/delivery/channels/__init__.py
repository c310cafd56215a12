"""Sender providers, registered in one place, and the set of senders the settings choose.

A channel (kit.channels.ChannelSpec) names the providers that can carry it; a provider here says how to build
its sender from the settings and which webhook routes it calls back on. `build_senders` asks the channel
registry for every channel and the settings for each channel's provider: no if-chain per channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from fastapi import APIRouter

from campaigns.delivery.channels.base import Sender
from campaigns.delivery.channels.local import CallTaskSender, ConsoleSender
from kit.channels import CHANNELS, ChannelSpec
from kit.settings import Settings

SenderFactory = Callable[[Settings, ChannelSpec, "int | None"], Sender]


@dataclass(frozen=True)
class Provider:
    """A sender provider: how its sender is built from the settings, and its webhook routes (if it has any)."""

    name: str
    build: SenderFactory
    routes: Callable[[], APIRouter] | None = None


def _console(settings: Settings, channel: ChannelSpec, console_show: int | None) -> Sender:
    return ConsoleSender(channel.name, show=console_show)


def _tasks(settings: Settings, channel: ChannelSpec, console_show: int | None) -> Sender:
    return CallTaskSender()


def _twilio(settings: Settings, channel: ChannelSpec, console_show: int | None) -> Sender:
    from campaigns.delivery.channels.twilio_sms import TwilioSmsSender

    return TwilioSmsSender(
        account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
        messaging_service_sid=settings.twilio_messaging_service_sid, from_number=settings.twilio_from,
        base_url=settings.twilio_base_url, status_callback=f"{settings.public_base_url.rstrip('/')}/v1/webhooks/twilio/status",
        timeout=settings.provider_timeout_seconds, clock_skew=timedelta(seconds=settings.provider_clock_skew_seconds))


def _sendgrid(settings: Settings, channel: ChannelSpec, console_show: int | None) -> Sender:
    from campaigns.delivery.channels.sendgrid_email import SendGridEmailSender

    return SendGridEmailSender(
        api_key=settings.sendgrid_api_key, from_email=settings.sendgrid_from_email,
        base_url=settings.sendgrid_base_url, unsubscribe_group_id=settings.sendgrid_unsubscribe_group_id,
        timeout=settings.provider_timeout_seconds)


def _fcm(settings: Settings, channel: ChannelSpec, console_show: int | None) -> Sender:
    from campaigns.delivery.channels.fcm_push import FcmPushSender

    if settings.fcm_service_account_file is None:
        raise ValueError("CRM_FCM_SERVICE_ACCOUNT_FILE is required for push through FCM")
    return FcmPushSender(project_id=settings.fcm_project_id, service_account_file=settings.fcm_service_account_file,
                         base_url=settings.fcm_base_url, timeout=settings.provider_timeout_seconds)


def _twilio_routes() -> APIRouter:
    from campaigns.delivery.provider_routes import twilio_routes

    return twilio_routes


def _sendgrid_routes() -> APIRouter:
    from campaigns.delivery.provider_routes import sendgrid_routes

    return sendgrid_routes


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("console", _console), Provider("tasks", _tasks), Provider("twilio", _twilio, _twilio_routes),
    Provider("sendgrid", _sendgrid, _sendgrid_routes), Provider("fcm", _fcm))}


def register_provider(provider: Provider) -> Provider:
    """Add a sender provider (a new channel's, or another SMS provider's)."""
    PROVIDERS[provider.name] = provider
    return provider


def provider_of(settings: Settings, channel: ChannelSpec) -> str:
    """The provider the settings choose for a channel (its default when it has no setting)."""
    chosen = getattr(settings, channel.provider_setting) if channel.provider_setting else channel.providers[0]
    if chosen not in channel.providers:
        raise ValueError(f"{channel.name}: provider '{chosen}' cannot carry it (use {', '.join(channel.providers)})")
    return chosen


def build_senders(settings: Settings, *, console_show: int | None = None) -> dict[str, Sender]:
    """One sender per registered channel, by the provider the settings choose for it."""
    return {channel.name: PROVIDERS[provider_of(settings, channel)].build(settings, channel, console_show)
            for channel in CHANNELS.all()}
