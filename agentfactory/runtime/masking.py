"""Replacing an agent's secrets with *** in what it prints (SPEC §4, §14). Pure.

A secret is masked in each form an agent's output can carry it: as given, trimmed of the
whitespace around it (a PEM block printed without its last newline), and as JSON string content
(the runtime's own events are JSON lines, where a newline is `\\n`). Each line of a secret becomes
one `***`, so masking never changes how many lines there are: capture counts raw lines to resume.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

MASK = "***"
# How many near-misses `_holdback` checks per secret before it holds a secret's whole length.
MAX_TRIES = 32


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """The distinct texts to mask for these secrets, longest first (blank ones mask nothing)."""
    forms: set[str] = set()
    for secret in secrets:
        for form in (secret, secret.strip(), json.dumps(secret, ensure_ascii=False)[1:-1]):
            if form.strip():
                forms.add(form)
    return sorted(forms, key=len, reverse=True)


def _mask_of(form: str) -> str:
    return "\n".join(MASK if part else "" for part in form.split("\n"))


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret replaced (for messages that may quote a secret)."""
    for form in secret_forms(secrets):
        if form in text:
            text = text.replace(form, _mask_of(form))
    return text


class Masker:
    """Masks secrets in one stream's bytes as they arrive, also when a secret is split across
    reads, across the 64 KiB cut of a long line or over several lines.

    What it returns never holds a secret, not even across two returns: the shortest tail of what
    came in that could still be the start of a secret stays here until the next read (or `flush`)
    settles it. That tail is shorter than the longest secret, so memory stays bounded, and a tail
    that ends a line of output is held only when it could begin a secret spanning several lines,
    so ordinary lines are passed on at once.
    """

    def __init__(self, secrets: Iterable[str]):
        self._forms = [(f.encode("utf-8", "surrogatepass"), _mask_of(f).encode()) for f in secret_forms(secrets)]
        # (form, the bytes it can end a held tail with): a tail can only end in one of those.
        self._starts = [(form, frozenset(form[:-1])) for form, _ in self._forms if len(form) > 1]
        self._held = b""

    @property
    def held_bytes(self) -> int:
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        """The masked bytes that are settled now."""
        if not self._forms:
            return data
        if self._held:
            data, self._held = self._held + data, b""
        for form, mask in self._forms:
            if form in data:
                data = data.replace(form, mask)
        keep = self._holdback(data)
        if keep:
            self._held = data[-keep:]
            return data[:-keep]
        return data

    def flush(self) -> bytes:
        """At the end of the stream: the held tail (it holds no whole secret)."""
        data, self._held = self._held, b""
        return data

    def _holdback(self, data: bytes) -> int:
        """Length of the longest tail of `data` that is a proper prefix of a secret."""
        n = len(data)
        if not n:
            return 0
        last, best = data[-1], 0
        for form, inner in self._starts:
            if last not in inner:
                continue
            lo = max(0, n - len(form) + 1)
            if n - lo <= best:
                continue
            first = form[:1]
            p, tries = data.find(first, lo), 0
            while p != -1 and n - p > best:
                if form.startswith(data[p:]):
                    best = n - p
                    break
                tries += 1
                if tries == MAX_TRIES:  # output made to look like a secret: hold its whole length
                    best = n - lo
                    break
                p = data.find(first, p + 1)
        return best
