"""Untrusted text that reaches a model is screened, and what looks like an instruction is logged.

Sample notes and goals are written by people, but they are pasted from elsewhere (a lab
book, a file's metadata, an e-mail), and earlier rounds' statements are a model's own
words; all of it goes into prompts as quoted data. The defence does not depend on this
screen: whatever a model then proposes is validated, dry-run against the limits, gated by
the autonomy policy and interlocked below every agent. The screen makes an attempt
visible: each text that addresses the system or asks for what only a person may decide
(limits, approval, autonomy, the beam, the stage) is logged once as an
``injection_suspected`` event naming the channel and the phrases.
"""

from __future__ import annotations

import hashlib
import re

from autoscope.tools.store import RunStore

#: phrases of an instruction to the system rather than a description of a sample
PATTERNS: dict[str, re.Pattern[str]] = {
    "addresses the system": re.compile(
        r"\b(system|assistant|developer)\s*(prompt|message|override|:)|\[/?(inst|sys)\]|<\|im_start\|>",
        re.IGNORECASE,
    ),
    "overrides instructions": re.compile(
        r"\b(ignore|disregard|forget|override|bypass|disable|skip|turn off)\b[^.\n]{0,40}"
        r"\b(previous|prior|above|instructions?|rules?|limits?|interlocks?|safety|checks?|dry[ -]?run|gates?)\b",
        re.IGNORECASE,
    ),
    "asks for approval or autonomy": re.compile(
        r"\b(auto[- ]?approve|approve (it|this|the plan|automatically|everything)|no (need|reason) to ask|"
        r"without (asking|approval|review)|(set|switch|change)\b[^.\n]{0,20}\bautonomy|fully autonomous)\b",
        re.IGNORECASE,
    ),
    "commands the instrument": re.compile(
        r"\b(set|raise|increase|use|turn up|crank)\b[^.\n]{0,30}\b(current|dose|dwell|beam|budget)\b[^.\n]{0,30}"
        r"(\d|max|maximum|highest|full)|\b(move|drive|send)\b[^.\n]{0,20}\bstage\b|\bunblank\b",
        re.IGNORECASE,
    ),
    "asks for secrets or files": re.compile(
        r"\b(token|password|api[_ ]?key|credentials?|secret)s?\b[^.\n]{0,30}\b(print|send|post|reveal|show|"
        r"upload)\b|\b(print|send|post|reveal|show|upload)\b[^.\n]{0,30}\b(token|password|api[_ ]?key|"
        r"credentials?|secrets?)\b|\b(rm -rf|delete (the|all) (run|data|files))\b",
        re.IGNORECASE,
    ),
}


def suspicious(text: str) -> list[str]:
    """The kinds of instruction ``text`` carries (empty for a plain description)."""
    return [name for name, pattern in PATTERNS.items() if pattern.search(text or "")]


def screen(store: RunStore, channel: str, text: str) -> list[str]:
    """Log ``text`` as ``injection_suspected`` (once per channel and text) when it carries instructions."""
    kinds = suspicious(text)
    if not kinds:
        return []
    digest = hashlib.sha256(f"{channel}\0{text}".encode()).hexdigest()[:16]
    seen = {e.get("digest") for e in store.events("injection_suspected")}
    if digest not in seen:
        store.append_event(
            "injection_suspected", channel=channel, kinds=kinds, digest=digest, excerpt=text[:300]
        )
    return kinds
