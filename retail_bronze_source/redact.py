"""Safe text about files and locations: what the package prints or writes never holds a credential of a URL, a host
path of the raw root, terminal escape sequences or an unbounded quote of a file.

`redact` is the one place URLs lose their credentials: the command line passes every message through it, and file-level
reject details (`reject_detail`) too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

REDACTED = "***"
DETAIL_MAX_CHARS = 1000
"""A file-level reject's detail is cut after this many characters: a parser message or a header list may quote any
amount of a file, and a detail is a diagnosis, not a copy."""

_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\s'\"<>\\]*)")
_QUERY_PARAMETER = re.compile(r"(?P<lead>[?&;](?P<name>[^=&;#\s'\"<>]+)=)(?P<value>[^&;#\s'\"<>]+)")
_SECRET_NAME = re.compile(r"sig|token|key|secret|pass|pwd|auth|cred|session", re.IGNORECASE)
"""Query parameter names whose values are redacted: signatures (AWS `X-Amz-Signature`, Azure SAS `sig`, GCS
`X-Goog-Signature`), tokens, keys, secrets, passwords, credentials, session tokens."""
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***`: the password of a user info (`user:***@`; a
    user info without a password, often a token, as a whole) and the values of query parameters whose names look
    secret (`?token=***`, `&X-Amz-Signature=***`)."""
    return _QUERY_PARAMETER.sub(_redact_parameter, _URL.sub(_redact_user_info, text))


def _redact_user_info(match: re.Match[str]) -> str:
    authority = match["authority"]
    if "@" not in authority:
        return match[0]
    user_info, host = authority.rsplit("@", 1)
    user, has_password, _ = user_info.partition(":")
    return f"{match['scheme']}{f'{user}:{REDACTED}' if has_password else REDACTED}@{host}"


def _redact_parameter(match: re.Match[str]) -> str:
    return f"{match['lead']}{REDACTED}" if _SECRET_NAME.search(match["name"]) else match[0]


def reject_detail(detail: str, roots: Iterable[str] = ()) -> str:
    """A file-level reject's detail as it is written: each of `roots` (spellings of the raw root: a local path, its
    resolved path, its `file://` URL) removed from the paths under it, so they read relative to the raw root (the
    root itself reads `<raw root>`); URL credentials redacted; terminal escape sequences dropped; each run of
    whitespace, line breaks included, one space; other control characters as `\\xNN`; at most `DETAIL_MAX_CHARS`
    characters, then a note of how many were left out.
    """
    text = _TERMINAL_ESCAPE.sub("", detail)
    for root in sorted({r.rstrip("/") for r in roots if r.strip("/")}, key=len, reverse=True):
        text = text.replace(f"{root}/", "")
        text = re.sub(rf"{re.escape(root)}(?![\w.-])", "<raw root>", text)
    text = " ".join(redact(text).split())
    text = _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
    if len(text) > DETAIL_MAX_CHARS:
        text = f"{text[:DETAIL_MAX_CHARS]}... ({len(text) - DETAIL_MAX_CHARS} more characters)"
    return text


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\x00")
"""Cells a spreadsheet may take for a formula (OWASP's CSV injection guidance: `=`, `+`, `-`, `@`, tab, carriage
return; OWASP ASVS adds NUL): they get a leading single quote, which spreadsheets read as "this cell is text"."""
_PICTURES = {**{chr(c): chr(0x2400 + c) for c in range(0x20)}, "\x7f": "\u2421"}
"""C0 control characters and DEL as their Unicode control pictures (line feed `␊`, carriage return `␍`, tab `␉`,
NUL `␀`, escape `␛`)."""
_CODE_POINTS = {chr(c): f"<U+{c:04X}>" for c in [*range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
                                                   *range(0x2066, 0x206A)]}
"""C1 control characters, the line and paragraph separators and the bidirectional embeddings, overrides and
isolates (which reorder what a viewer shows) as `<U+XXXX>`."""
_RARE = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{2028}\x{2029}\x{202A}-\x{202E}\x{2066}-\x{2069}]"
_LINE_BREAKS_AND_TABS = ("\n", "\r", "\t")


def spreadsheet_safe(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Text cells that a spreadsheet shows as they are: a cell starting like a formula (`FORMULA_START`) gets a
    leading `'`, then control and bidirectional formatting characters become visible (`_PICTURES`,
    `_CODE_POINTS`), so that every record is one line.

    Vectorized: cells of printable ASCII (nearly all of a rejects table) are found by one pass and left alone; the
    others get one replacement pass per line break or tab, and one per rarer character present.
    """
    text = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    first = pc.utf8_slice_codeunits(text, 0, 1)
    formula = pc.fill_null(pc.is_in(first, value_set=pa.array(FORMULA_START, first.type)), False)
    if pc.any(formula).as_py():
        quote, nothing = pa.scalar("'", text.type), pa.scalar("", text.type)
        text = pc.replace_with_mask(text, formula, pc.binary_join_element_wise(quote, pc.filter(text, formula), nothing))
    other = pc.invert(pc.fill_null(pc.ascii_is_printable(text), True))
    if not pc.any(other).as_py():
        return text
    cells = pc.filter(text, other)
    for char in _LINE_BREAKS_AND_TABS:
        cells = pc.replace_substring(cells, char, _PICTURES[char])
    if pc.any(pc.match_substring_regex(cells, _RARE)).as_py():
        for char, shown in {**_PICTURES, **_CODE_POINTS}.items():
            if char not in _LINE_BREAKS_AND_TABS and pc.any(pc.match_substring(cells, char)).as_py():
                cells = pc.replace_substring(cells, char, shown)
    return pc.replace_with_mask(text, other, cells)
