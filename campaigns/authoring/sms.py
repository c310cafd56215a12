"""SMS length: GSM-7 when every character is in the GSM 03.38 alphabet, else UCS-2; segments as carriers count them."""

from __future__ import annotations

from dataclasses import dataclass

# GSM 03.38 basic character set and the extension table (each extension character takes two septets).
GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_EXTENSION = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class SmsLength:
    """Encoding, length in its units (septets or UTF-16 code units) and the number of segments billed."""

    encoding: str
    units: int
    segments: int


def sms_length(body: str) -> SmsLength:
    """How a carrier counts a message: 160/153 septets per segment in GSM-7, 70/67 UTF-16 units in UCS-2."""
    if all(ch in GSM_BASIC or ch in GSM_EXTENSION for ch in body):
        units = sum(2 if ch in GSM_EXTENSION else 1 for ch in body)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(body.encode("utf-16-le")) // 2  # characters beyond the BMP take two units
        single, multi, encoding = 70, 67, "UCS-2"
    segments = 1 if units <= single else -(-units // multi)
    return SmsLength(encoding=encoding, units=units, segments=segments if units else 0)
