"""Shared building blocks of the site model."""

from __future__ import annotations

import re
import string
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

_IDENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _ident(v: str) -> str:
    if not _IDENT.match(v):
        raise ValueError(
            "expected an identifier of letters, digits, '_', '-' or '.' (no '/', no spaces)"
        )
    return v


Ident = Annotated[str, AfterValidator(_ident)]


class Strict(BaseModel):
    """Base of every site-file model: unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, None: 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(v: object) -> float:
    """``2s``, ``500ms``, ``15min``, ``1h``, ``7d`` or a number of seconds -> seconds."""
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 2s, 500ms, 15min, 1h")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError("expected a duration >= 0")
        return float(v)
    if isinstance(v, str):
        m = _DUR.match(v)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"expected a duration such as 2s, 500ms, 15min, 1h; got {v!r}")


#: A duration in seconds written as ``2s``, ``500ms``, ``15min``, ``1h`` or a number.
Duration = Annotated[float, BeforeValidator(parse_duration)]


#: Widest field (and longest precision) a site file's ``str.format`` templates may ask for.
#: ``"{n:>999999999}"`` would make a 1 GB string per device (or per alarm event).
MAX_FORMAT_WIDTH = 100

_FORMATTER = string.Formatter()
_NUMBERS = re.compile(r"\d+")


def check_format(template: str) -> str:
    """Refuse a ``str.format`` template that could exhaust memory: a width or precision above
    :data:`MAX_FORMAT_WIDTH`, or a nested field in a format spec (``{n:{w}}``, whose width
    would come from data). Returns the template; raises ``ValueError`` saying what is wrong.
    A string that is not a valid template at all is returned as is (it is then plain text)."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError:
        return template
    for _text, name, spec, _conv in parts:
        if name is None or not spec:
            continue
        if "{" in spec:
            raise ValueError(f"template {template!r}: a format spec cannot contain a field "
                             f"({{{name}:{spec}}}); write the width as a number")
        for num in _NUMBERS.findall(spec):
            digits = num.lstrip("0")
            if len(digits) > 3 or (digits and int(digits) > MAX_FORMAT_WIDTH):
                raise ValueError(f"template {template!r}: width or precision {num} in "
                                 f"{{{name}:{spec}}} is above the limit of {MAX_FORMAT_WIDTH}")
    return template
