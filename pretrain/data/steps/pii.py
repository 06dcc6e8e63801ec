"""PII redaction: e-mail addresses, phone numbers and public IPv4 addresses become placeholders, counted.

Two rules keep real text that only looks like PII (both found on this machine's own documents, issue 26):
- an e-mail's domain is dot-separated labels of letters, digits and hyphens ending in a letters-only top-level
  domain, so a symbol version (`fgetc@@GLIBC_2.0` in valgrind's manual) is not an address;
- a phone number keeps one separator between its groups (`212-555-0199`, `212.555.0199`, `212 555 0199`,
  `(212) 555-0199`), so a clause number (`Clause 252.227-7013` in D-Bus's copyright) is not a number.
"""

from __future__ import annotations

import re

from pretrain.data.documents import Document
from pretrain.data.steps.base import Step, StepStats

_EMAIL = re.compile(r"\b[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w.-])(?:\+?\d{1,3}[\s.-])?(?:\(\d{3}\)\s?\d{3}([\s.-])|\d{3}([\s.-])\d{3}\2)\d{4}(?![\w-])")
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
