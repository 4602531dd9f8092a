"""Account names: one Unicode form, no invisible characters, no look-alike twins, safe to print.

Why: a name is how the audit trail and the review cards tell people apart. `admin` + a zero-width
space showed as "admin"; "José" typed precomposed (NFC) and decomposed (NFD) made two accounts that
look the same; a tab or newline forged a line of `users list` and an ESC put escape codes on the
terminal (QA review 7). core.store.accounts applies these rules to new names only: a name stored
before them keeps signing in, and prints escaped.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

# Never in a new name: control (Cc), format (Cf: zero-width space and joiners, bidi overrides),
# surrogate (Cs), private use (Co) and unassigned (Cn) characters, and separators (Zs, Zl, Zp) other
# than the plain space.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# Letters, marks and symbols that draw nothing (Hangul fillers, the braille blank, the combining
# grapheme joiner, Khmer inherent vowels, Mongolian and other variation selectors). Hand-written:
# Unicode marks them Default_Ignorable_Code_Point, a property unicodedata does not expose.
_INVISIBLE = frozenset({0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0,
                        *range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)})


def normal(name: str) -> str:
    """The one form a name is stored and looked up in: NFC (precomposed "é", as most keyboards type it)."""
    return unicodedata.normalize("NFC", name)


def refused(char: str) -> bool:
    """Whether `char` may not be in a new name: invisible, a control or format character, or a
    separator other than the plain space."""
    return char != " " and (unicodedata.category(char) in _REFUSED_CATEGORIES or ord(char) in _INVISIBLE)


def described(char: str) -> str:
    """U+200B ZERO WIDTH SPACE: how a message names a refused character without printing it."""
    return f"U+{ord(char):04X} {unicodedata.name(char, 'CONTROL' if unicodedata.category(char) == 'Cc' else 'UNNAMED')}"


def twin_key(name: str) -> str:
    """What two names that read the same share: NFKC, case folded (Unicode's identifier caseless
    match), runs of spaces as one. "Admin", "ａｄｍｉｎ" (full width) and "admin" share one."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


def twin(name: str, existing: Iterable[str]) -> str | None:
    """The existing name that `name` equals or reads as (twin_key), else None; the name itself first."""
    key, match = twin_key(name), None
    for other in existing:
        if other == name:
            return other
        if match is None and twin_key(other) == key:
            match = other
    return match


def shown(name: str, quoted: bool = False) -> str:
    """`name` for a terminal or a log line: as it is, or (with a refused character or a backslash)
    quoted with Python's escapes, like repr(), so no name prints a tab, a line or an escape code
    and one that cannot be told from another's prints differently. `quoted`: quote every name."""
    if "\\" not in name and not any(map(refused, name)):
        return f"'{name}'" if quoted else name
    return "'" + "".join(ascii(c)[1:-1] if c == "\\" or refused(c) else c for c in name) + "'"
