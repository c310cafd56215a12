"""Channel senders behind one protocol, and the set the settings choose."""

from __future__ import annotations

from datetime import timedelta

from campaigns.channels.base import Sender
from campaigns.channels.local import CallTaskSender, ConsoleSender
from crm.settings import Settings


def build_senders(settings: Settings, *, console_show: int | None = None) -> dict[str, Sender]:
    """One sender per channel as configured (console unless a provider is chosen); phone is always call tasks."""
    senders: dict[str, Sender] = {"phone": CallTaskSender()}
    callback = f"{settings.public_base_url.rstrip('/')}/webhooks/twilio/status"
    if settings.sms_provider == "twilio":
        from campaigns.channels.twilio_sms import TwilioSmsSender

        senders["sms"] = TwilioSmsSender(
            account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
            messaging_service_sid=settings.twilio_messaging_service_sid, from_number=settings.twilio_from,
            base_url=settings.twilio_base_url, status_callback=callback, timeout=settings.provider_timeout_seconds,
            clock_skew=timedelta(seconds=settings.provider_clock_skew_seconds))
    else:
        senders["sms"] = ConsoleSender("sms", show=console_show)
    if settings.email_provider == "sendgrid":
        from campaigns.channels.sendgrid_email import SendGridEmailSender

        senders["email"] = SendGridEmailSender(
            api_key=settings.sendgrid_api_key, from_email=settings.sendgrid_from_email,
            base_url=settings.sendgrid_base_url, unsubscribe_group_id=settings.sendgrid_unsubscribe_group_id,
            timeout=settings.provider_timeout_seconds)
    else:
        senders["email"] = ConsoleSender("email", show=console_show)
    if settings.push_provider == "fcm":
        from campaigns.channels.fcm_push import FcmPushSender

        if settings.fcm_service_account_file is None:
            raise ValueError("CRM_FCM_SERVICE_ACCOUNT_FILE is required for push through FCM")
        senders["push"] = FcmPushSender(project_id=settings.fcm_project_id,
                                        service_account_file=settings.fcm_service_account_file,
                                        base_url=settings.fcm_base_url, timeout=settings.provider_timeout_seconds)
    else:
        senders["push"] = ConsoleSender("push", show=console_show)
    return senders
