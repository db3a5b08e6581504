"""How a config document is checked: the building blocks of the key table (`config_schema.py`): a
`Scalar`, `ListOf`, `MapOf` or `Section` checks one value (type, range, choices, `${VAR}`). The
YAML itself is read by `yaml_load.py`.

Checking never stops at the first problem: each is added to a `Checker` as "key.path: what is
wrong", and the value is left out of the result. Rules that join several keys (api_key or
api_key_file, the keys each source type needs) live in `config.py`.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Mapping

import yaml

INVALID = object()  # a value that failed its check; its problem is already recorded

_VARIABLE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an environment variable, or a key written bare
# how environment variables are named: in a secret's value, what else stands in ${...} may be the secret
_SHOWN_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_KIND_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "time": "a date and time with its time zone, like 2026-12-01T00:00:00Z"}


@dataclass
class Checker:
    """Collects problems while a document is checked; `environ` feeds `${VAR}`."""

    environ: Mapping[str, str]
    problems: list[str] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")


class Checked(dict):
    """The valid values of one mapping. `given` also names keys that were present but invalid,
    so a rule like "api_key or api_key_file is required" does not fire twice. `written` holds,
    for each key whose text referred to ${VAR}, that text `as_written`."""

    def __init__(self, values: dict, given: frozenset[str], written: Mapping[str, str] | None = None):
        super().__init__(values)
        self.given = given
        self.written = dict(written or {})


def key_path(parent: str, key: object) -> str:
    """Given a parent path and a key, return the key's path: braze.api_key, channels["Braze Append"]."""
    text = str(key)
    if _NAME.fullmatch(text):
        return f"{parent}.{text}" if parent else text
    return f"{parent}[{json.dumps(text)}]"


def describe(value: object) -> str:
    """Name the YAML type of `value`, never its content (it may be a secret)."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean (quote words like yes, no, on, off to keep them text)"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__


def as_written(text: str) -> str:
    """Given a value that refers to ${VAR}, return it as a problem may show it instead of its
    substituted value: as written, with ${...} for a name not spelled like an environment variable
    (it may be part of a secret). Return "" if it refers to no variable."""
    def shown(match: re.Match) -> str:
        name = match.group(1)
        return "${...}" if name is not None and not _SHOWN_NAME.fullmatch(name) else match.group(0)

    refers = any(match.group(1) is not None for match in _VARIABLE.finditer(text))
    return _VARIABLE.sub(shown, text) if refers else ""


def substitute(text: str, path: str, checker: Checker, secret: bool = False) -> str | object:
    """Given a string value, replace each ${VAR} from the environment and $${ by a literal ${.
    Return INVALID, with a problem recorded, if a variable is unset or malformed. In a `secret`
    value, an unset name not spelled like an environment variable is not shown."""
    failed = False

    def value_of(match: re.Match) -> str:
        nonlocal failed
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        if name is None or not _NAME.fullmatch(name):
            checker.add(path, "malformed ${...}: write ${NAME}, or $${ for a literal ${")
        elif name not in checker.environ and secret and not _SHOWN_NAME.fullmatch(name):
            checker.add(path, "refers to an unset environment variable whose name is not shown (not written "
                              "in A-Z, 0-9 and _, it may be part of the secret); write $${ for a literal ${")
        elif name not in checker.environ:
            checker.add(path, f"environment variable {name} is not set")
        else:
            return checker.environ[name]
        failed = True
        return ""

    result = _VARIABLE.sub(value_of, text)
    return INVALID if failed else result


@dataclass(frozen=True)
class Scalar:
    """One string, integer, number or boolean, with optional bounds and choices."""

    kind: str
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive minimum
    choices: tuple[str, ...] = ()
    pattern: str | None = None  # a regular expression the whole string must match
    secret: bool = False

    def check(self, value: object, path: str, checker: Checker) -> object:
        """Return the value (a float for "float"), or INVALID after recording a problem."""
        if isinstance(value, str) and "$" in value:
            value = substitute(value, path, checker, self.secret)
            if value is INVALID:
                return INVALID
            if self.kind != "str":  # `port: ${SFTP_PORT}` arrives as text; read it as YAML would
                value = _scalar_from_text(value)
        if self.kind == "time":
            return _epoch_seconds(value, path, checker)
        if not _is_kind(value, self.kind):
            checker.add(path, f"must be {_KIND_NAMES[self.kind]}, not {describe(value)}")
            return INVALID
        problem = self._out_of_range(value)
        if problem:
            checker.add(path, problem)
            return INVALID
        return float(value) if self.kind == "float" else value

    def _out_of_range(self, value: object) -> str | None:
        if self.kind == "str" and not value:
            return "must not be empty"
        if self.kind == "str" and "\x00" in value:   # no path, name or secret holds one; the OS refuses them
            return "must not contain a NUL character"
        if self.choices and value not in self.choices:
            shown = "" if self.secret else f", not {str(value)[:40]!r}"
            return f"must be one of {', '.join(map(repr, self.choices))}{shown}"
        if self.pattern and not re.fullmatch(self.pattern, value):
            return f"must match {self.pattern}"
        if self.kind in ("int", "float") and not self._in_range(value):
            return f"must be {self._range_text()}"
        return None

    def _in_range(self, value: float) -> bool:
        return ((self.minimum is None or value >= self.minimum)
                and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above))

    def _range_text(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum} and {self.maximum}"
        lower = f">= {self.minimum}" if self.minimum is not None else f"> {self.above}"
        return lower if self.maximum is None else f"{lower} and <= {self.maximum}"


@dataclass(frozen=True)
class ListOf:
    """A list that must not be empty."""

    item: Scalar | Section
    doc: str

    def check(self, value: object, path: str, checker: Checker) -> object:
        if not isinstance(value, list):
            checker.add(path, f"must be a list, not {describe(value)}")
            return INVALID
        if not value:
            checker.add(path, "must not be empty")
        checked = [self.item.check(item, f"{path}[{index}]", checker) for index, item in enumerate(value)]
        return [item for item in checked if item is not INVALID]


@dataclass(frozen=True)
class MapOf:
    """A mapping whose keys are the user's (channel names, column names)."""

    value: Scalar
    doc: str
    non_empty: bool = False

    def check(self, value: object, path: str, checker: Checker) -> object:
        if not isinstance(value, dict):
            checker.add(path, f"must be a mapping, not {describe(value)}")
            return INVALID
        if self.non_empty and not value:
            checker.add(path, "must not be empty")
        result = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key.strip():
                checker.add(key_path(path, key), "keys must be non-empty text (quote them)")
                continue
            checked = self.value.check(item, key_path(path, key), checker)
            if checked is not INVALID:
                result[key] = checked
        return result


@dataclass(frozen=True)
class Section:
    """A mapping with fixed keys. A key given as null (`http:` with nothing below) is absent."""

    keys: dict[str, Scalar | ListOf | MapOf | Section]
    doc: str
    required: tuple[str, ...] = ()

    def check(self, value: object, path: str, checker: Checker) -> object:
        if not isinstance(value, dict):
            checker.add(path, f"must be a mapping, not {describe(value)}")
            return INVALID
        for key in value:
            if key not in self.keys:
                self._report_unknown(key, path, checker)
        result = {}
        for key, spec in self._with_secret_files().items():
            if value.get(key) is not None:
                checked = spec.check(value[key], key_path(path, key), checker)
                if checked is not INVALID:
                    result[key] = checked
            elif key in self.required:
                checker.add(key_path(path, key), "is required")
        given = frozenset(key for key in self.keys if value.get(key) is not None)
        written = {key: as_written(value[key]) for key in given if isinstance(value[key], str)}
        return Checked(result, given, {key: text for key, text in written.items() if text})

    def _report_unknown(self, key: object, path: str, checker: Checker) -> None:
        """Name an unknown key, unless a secret key's value ran into it (`{api_key:S3cret}`, no
        space after the colon): then name only the secret key."""
        for name, spec in self.keys.items():
            if getattr(spec, "secret", False) and re.match(rf"{re.escape(name)}[:=\s]", str(key)):
                checker.add(path, f"unknown key that starts with {name} (the rest is not shown: it may be "
                                  f"the secret); write `{name}: value`, with a space after the colon")
                return
        checker.add(key_path(path, key), "unknown key" + _suggestion(key, self.keys))

    def _with_secret_files(self) -> dict[str, Scalar | ListOf | MapOf | Section]:
        """The keys, with `<key>_file` of each secret `<key>` checked as a secret too: an operator
        may write the secret itself there."""
        secret_files = {f"{key}_file" for key, spec in self.keys.items() if getattr(spec, "secret", False)}
        return {key: replace(spec, secret=True) if key in secret_files else spec
                for key, spec in self.keys.items()}


def _suggestion(key: object, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _epoch_seconds(value: object, path: str, checker: Checker) -> object:
    """A moment as seconds since the epoch: YAML's timestamp or date (midnight UTC), or ISO 8601
    text; INVALID after recording a problem if it is none, or has no time zone (whose clock?)."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            pass
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time(), datetime.timezone.utc)
    if isinstance(value, datetime.datetime) and value.tzinfo is None:
        checker.add(path, "has no time zone: add Z (UTC) or an offset like +01:00")
        return INVALID
    if not isinstance(value, datetime.datetime):
        checker.add(path, f"must be {_KIND_NAMES['time']}, not {describe(value)}")
        return INVALID
    return value.timestamp()


def _is_kind(value: object, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "float":
        return isinstance(value, (int, float))
    return isinstance(value, {"str": str, "int": int, "bool": bool}[kind])


def _scalar_from_text(text: str) -> object:
    """Read a substituted value the way YAML reads a plain scalar: "16" -> 16, "true" -> True."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, int, float)) else text
