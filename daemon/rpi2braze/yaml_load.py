"""Strict YAML for the config file: line and column for a syntax error, duplicated keys refused,
and no text of the document in an error (a secret value starting with *, & or ! is read by YAML as
an alias, an anchor or a tag, and PyYAML's messages quote it).
"""

from __future__ import annotations

import re

import yaml

from rpi2braze.errors import ConfigError


def parse_yaml(text: str, name: str) -> object:
    """Given YAML text, return the document. Raise ConfigError naming line and column and the kind
    of a syntax error (never its token: a secret starting with * or ! is read as an alias or a
    tag), and listing every duplicated key (YAML would silently keep the last)."""
    loader = _StrictLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise ConfigError([f"{where}: invalid YAML: {_yaml_problem(error)}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{name}: YAML error: {type(error).__name__}"]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([f"{name}:{where}" for where in loader.duplicates])
    return document


# PyYAML's problems about a token a secret value may start (*, &, !), by how their text starts,
# and what to say instead of the token
_TOKEN_PROBLEMS = (
    ("found undefined alias", "an alias (*name) that is not defined; quote a value that starts with *"),
    ("while scanning an alias", "an alias (*name) that is not one; quote a value that starts with *"),
    ("found duplicate anchor", "an anchor (&name) given twice; quote a value that starts with &"),
    ("while scanning an anchor", "an anchor (&name) that is not one; quote a value that starts with &"),
    ("could not determine a constructor for the tag",
     "a tag (!name) this file may not use; quote a value that starts with !"),
    ("found undefined tag handle", "a tag handle (!name!) that is not defined; quote a value that starts with !"),
    ("while scanning a tag", "a tag (!name) that is not one; quote a value that starts with !"),
    ("while parsing a tag", "a tag (!name) that is not one; quote a value that starts with !"),
    ("failed to decode base64", "a !!binary value that is not base64"),
    ("failed to convert base64", "a !!binary value that is not base64"),
)
# PyYAML quotes a token after these words ("found character '@'"); its own words elsewhere
_QUOTED = re.compile(r"(?P<before>found |got |character |handle )?(?P<quoted>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")
_OWN_WORDS = re.compile(r"'(?:<[a-z ]+>|[^\w\s\\])'")  # "expected '<document start>'", "expected ',' or ']'"
_TOKEN_KIND = re.compile(r"'(?:<[a-z ]+>|[-?:,\[\]{}])'")  # the parser's name for a token: "but got ':'"
_WHITESPACE = ("'\\t'", "' '")  # no one's secret, and a tab is a common slip


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    """Describe a YAML syntax error by its kind, without the document's text it quotes."""
    for start, kind in _TOKEN_PROBLEMS:
        if (error.problem or "").startswith(start) or (error.context or "").startswith(start):
            return kind
    detail = f"{error.context}: {error.problem}" if error.context else str(error.problem)
    from_parser = isinstance(error, yaml.parser.ParserError)  # it quotes token kinds; the scanner quotes text

    def hide(match: re.Match) -> str:
        quoted, before = match["quoted"], match["before"]
        shown = (quoted in _WHITESPACE or (before is None and _OWN_WORDS.fullmatch(quoted))
                 or (from_parser and before in ("found ", "got ") and _TOKEN_KIND.fullmatch(quoted)))
        return match[0] if shown else f"{before or ''}(not shown)"

    return _QUOTED.sub(hide, detail)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicated mapping keys instead of keeping the last one, and reports
    an impossible date (which PyYAML lets escape as ValueError) as a YAML error with its place."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    mark = key_node.start_mark
                    self.duplicates.append(f"{mark.line + 1}:{mark.column + 1}: key {key_node.value!r} "
                                           "appears twice in one mapping")
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> object:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:   # 2024-13-45 matches YAML's date pattern, then datetime refuses it
            raise yaml.constructor.ConstructorError(
                None, None, "a date that is not one (like 2024-13-45); quote it to keep it text",
                node.start_mark) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _StrictLoader.construct_yaml_timestamp)
