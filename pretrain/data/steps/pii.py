"""PII redaction: e-mail addresses, phone numbers and public IPv4 addresses become placeholders, counted."""

from __future__ import annotations

import re

from pretrain.data.documents import Document
from pretrain.data.steps.base import Step, StepStats

_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_PHONE = re.compile(r"(?<!\w)(?:\+?\d{1,3}[\s.-])?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\w)")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")


def _public_ip(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    return not (ip.is_private or ip.is_loopback or ip.is_reserved or ip.is_multicast or ip.is_link_local)


class PIIRedactor(Step):
    """Replaces e-mail addresses, phone numbers and public IPv4 addresses; never drops a document."""

    name = "pii"
    EMAIL, PHONE, IP = "<EMAIL>", "<PHONE>", "<IP_ADDRESS>"

    def reject(self, doc: Document) -> str | None:
        changed = self.stats.setdefault(doc.domain, StepStats()).changed
        text, n = _EMAIL.subn(self.EMAIL, doc.text)
        changed["emails"] += n
        text, n = _PHONE.subn(self.PHONE, text)
        changed["phone numbers"] += n

        def ip(match: re.Match) -> str:
            if _public_ip(match.group(0)):
                changed["ip addresses"] += 1
                return self.IP
            return match.group(0)

        doc.text = _IPV4.sub(ip, text)
        return None
