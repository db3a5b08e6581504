"""From an export's header and rows to Braze attributes objects (DESIGN.md, "Mapping").

`plan_columns` reads the header once and decides, for each column, what it becomes and which
normaliser checks it. `map_row` then only walks those precomputed (index, target, convert)
tuples, because it runs once for each of millions of rows: a few hundred nanoseconds per cell
are most of the pipeline's cost, so it is written for speed (see the comments on why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from collections import Counter
from typing import Callable, Iterable

import orjson

from rpi2braze import normalize
from rpi2braze.errors import BadFileError, ConfigError, RowRejected
from rpi2braze.model import ChannelMode, RawRow
from rpi2braze.settings import COLUMN_TYPES, MappingSettings

CONTACT_IDS = "rpi_contact_ids"
CHANNEL_EXEC_IDS = "rpi_channel_exec_ids"
AUDIENCE_OUTPUTS = "rpi_audience_outputs"
OFFERS = "rpi_offers"
ATTRIBUTES = "rpi_cdp_attributes"
STANDARD_FIELDS = ("external_id", "first_name", "last_name", "email", "country", "dob", "gender",
                   "home_city", "phone")
ARRAY_FIELDS = (AUDIENCE_OUTPUTS, CONTACT_IDS, CHANNEL_EXEC_IDS)
TARGETS = STANDARD_FIELDS + ARRAY_FIELDS  # what `mapping.fields` may map a column to
DEFAULT_FIELDS = {normalize.header_key(name): name for name in STANDARD_FIELDS} | {
    "outputname": AUDIENCE_OUTPUTS,
    "rpcontactid": CONTACT_IDS,
    "channelexecutionid": CHANNEL_EXEC_IDS,
}
MAX_CHARS = normalize.MAX_STRING_CHARS
MAX_ATTRIBUTES_BYTES = 100_000  # Braze: a nested object is at most 100 KB
PREPENDED = (CONTACT_IDS, CHANNEL_EXEC_IDS)  # RPI writes these, maybe unnamed, before the rest
PREPENDED_NAMES = ("RPContactID", "ChannelExecutionID")   # their names in RPI's Offer History
UNNAMED = ""   # the target of a column after the header's last name

Convert = Callable[[str], object]

# None: a plain string, whose length map_row checks itself (a call per cell costs too much).
_SCALAR_CONVERTERS: dict[str, Convert | None] = {
    "first_name": None,
    "last_name": None,
    "home_city": None,
    "email": normalize.email,
    "country": normalize.country,
    "dob": normalize.dob,
    "gender": normalize.gender,
}
# The longest JSON a converted value can take: 255 characters escaped as \u00XX, or a {"$time"}.
_MAX_VALUE_JSON_BYTES = MAX_CHARS * 6 + 2
# Countries, genders and birth dates repeat across rows: a plan keeps their converted values
# (a dict lookup in map_row costs a fraction of a call through the normaliser's lru_cache).
_MEMOISED = frozenset({"country", "gender", "dob"})
MEMO_ENTRIES = 65536  # per column and plan; further new values are converted every time
_UNSEEN = object()
_APPEND = ChannelMode.APPEND  # looking it up on the Enum costs ~80 ns per row
# An external_id of at most this many characters is within Braze's 987 bytes whatever they are.
_SHORT_ID_CHARS = normalize.MAX_EXTERNAL_ID_BYTES // 4


@dataclass(frozen=True)
class Layout:
    """Where each target sits in a row of `width` values."""

    width: int
    id_index: int
    phone_index: int | None
    # (index, target, convert) and, for scalars, memo: convert None means a plain string of at
    # most 255 characters; memo, if not None, maps the column's values seen so far to theirs.
    scalars: tuple[tuple[int, str, Convert | None, dict | None], ...]  # standard fields but id, phone
    arrays: tuple[tuple[int, str], ...]                      # {"add": [value]} fields
    attributes: tuple[tuple[int, str, Convert | None], ...]  # keys of rpi_cdp_attributes
    unnamed: tuple[int, ...] = ()   # columns after the last name (a trailing delimiter): must stay empty


@dataclass(frozen=True)
class ColumnPlan:
    """What each column of one export becomes: `layout`, for rows of its width. `shifted`: the
    file's rows carry RPI's two prepended values in front of a header that does not name them."""

    header: tuple[str, ...]
    layout: Layout
    shifted: bool
    check_attributes_size: bool  # enough wide columns that the 100 KB limit can be reached
    # offer -> its rpi_offers value, one dict shared by every row: the batcher merges objects
    # into new ones and nothing downstream changes an object (tests/unit/test_mapping.py).
    offers: dict[str, dict] = field(default_factory=dict, compare=False)


def plan_columns(header: tuple[str, ...], mapping: MappingSettings, row_width: int | None = None) -> ColumnPlan:
    """Given an export's header, the mapping settings and the width of its rows (most_common_width;
    None: the header's), return the plan `map_row` follows. With `prepended_columns: auto`, rows
    two values wider than a header that does not name RPI's two IDs carry them in front: that is
    decided once per file, so one ragged row cannot move a row's values to other fields.

    Raise BadFileError, quoting the header, if no column is the external_id, two columns map to
    the same target, or a header cell is empty (other than RPI's two prepended columns, and the
    cells after the last name, which a trailing delimiter leaves: their values must be empty).
    Raise ConfigError if `mapping` names a target or type that does not exist.
    `mapping.types` applies to the columns that become rpi_cdp_attributes keys.
    """
    fields = _configured(mapping.fields, TARGETS, "fields")
    types = _configured(mapping.types, COLUMN_TYPES, "types")
    names = tuple(cell.strip() for cell in header)
    if row_width is not None and row_width < len(names) and not any(names[row_width:]):
        names = names[:row_width]   # a trailing delimiter on the header line only
    columns = _targets(names, fields, mapping.prepended_columns == "auto")
    if "external_id" not in {target for _, target, _ in columns}:
        raise BadFileError(f"no external_id column in the header {_quoted(names)}")
    shifted = (mapping.prepended_columns == "auto" and row_width == len(names) + 2
               and not {target for _, target, _ in columns} & set(PREPENDED))
    if shifted:
        moved = [(index + 2, target, name) for index, target, name in columns]
        columns = [(0, PREPENDED[0], ""), (1, PREPENDED[1], "")] + moved
    layout = _layout(columns, types)
    worst_case = sum(len(key) + 4 + _MAX_VALUE_JSON_BYTES for _, key, _ in layout.attributes)
    return ColumnPlan(names, layout, shifted, worst_case + 2 > MAX_ATTRIBUTES_BYTES)


def named_header(header: tuple[str, ...], plan: ColumnPlan) -> tuple[str, ...]:
    """The header naming every value of the plan's rows: RPI's two IDs first when they come
    unnamed; without unnamed cells a trailing delimiter left on the header line only."""
    header = header[:len(plan.header)]
    return (*PREPENDED_NAMES, *header) if plan.shifted else header


def most_common_width(rows: Iterable[RawRow]) -> int | None:
    """The number of values most of these rows have (the fewest, among equally common ones);
    None if no row could be read."""
    widths = Counter(len(row.values) for row in rows if not row.error)
    return min(widths, key=lambda width: (-widths[width], width)) if widths else None


def map_row(plan: ColumnPlan, row: RawRow, offer: str, mode: ChannelMode,
            default_phone_region: str) -> dict:
    """Given a row of an export planned by `plan`, return its Braze attributes object: the
    normalised standard fields, the rpi_* arrays as {"add": [...]} (rpi_offers gets `offer`), and
    the other columns in rpi_cdp_attributes with "_merge_objects": true. Empty cells are left out.
    A phone number without a country code is read as one of the row's country, or, if the row
    has none or it is none there, of `default_phone_region`.

    Raise RowRejected, with the reason, if the reader could not parse the row, its length is not
    the plan's, it has no external_id, or a value breaks Braze's formats or limits; the first
    such value in the order of the result's keys names the reason.
    """
    # One function on purpose: it runs for every row, and a call costs about as much as a cell.
    if row.error:
        raise RowRejected(row.error)
    values = row.values
    layout = plan.layout
    if len(values) != layout.width:
        raise RowRejected(_width_problem(plan, len(values)))
    identifier = values[layout.id_index].strip()
    if not identifier:
        raise RowRejected(f"row has no external_id (column {layout.id_index + 1} is empty)")
    if len(identifier) > _SHORT_ID_CHARS:
        normalize.external_id(identifier)  # raises: too long
    for index in layout.unnamed:
        if values[index].strip():
            raise RowRejected(f"row has a value in column {index + 1}, which the header leaves unnamed")
    result = {"external_id": identifier, "_update_existing_only": mode is _APPEND}
    for index, field, convert, memo in layout.scalars:
        if value := values[index].strip():
            if convert is None:
                if len(value) > MAX_CHARS:
                    normalize.text(value, field)  # raises: too long
                result[field] = value
                continue
            if memo is None:
                converted = convert(value)
            elif (converted := memo.get(value, _UNSEEN)) is _UNSEEN:
                converted = _remember(memo, value, convert(value))
            if converted is not None:
                result[field] = converted
    if layout.phone_index is not None and (value := values[layout.phone_index].strip()):
        result["phone"] = normalize.phone(value, default_phone_region, result.get("country"))
    for index, field in layout.arrays:
        if value := values[index].strip():
            if len(value) > MAX_CHARS:
                normalize.text(value, field)  # raises: too long
            result[field] = {"add": [value]}
    result[OFFERS] = plan.offers.get(offer) or _offer_add(plan, offer)
    attributes = {}
    for index, key, convert in layout.attributes:
        if value := values[index].strip():
            if convert is not None:
                attributes[key] = convert(value)
            elif len(value) <= MAX_CHARS:
                attributes[key] = value
            else:
                attributes[key] = normalize.text(value, f"{ATTRIBUTES}.{key}")  # raises: too long
    if attributes:
        if plan.check_attributes_size:
            _check_size(attributes)
        result["_merge_objects"] = True
        result[ATTRIBUTES] = attributes
    return result


def every_problem(plan: ColumnPlan, row: RawRow, offer: str, mode: ChannelMode, default_phone_region: str,
                  first: str) -> str:
    """Given a row map_row rejected with reason `first`, return every reason to reject it, `first`
    first, joined by " | ": map_row stops at the first bad value, and a row fixed by hand for
    that one alone would be rejected again for the next. Each other value is mapped on its own
    (a phone number with the row's country, if that is one), so only rejected rows pay for this."""
    layout = plan.layout
    if row.error or len(row.values) != layout.width or row_external_id(plan, row) is None:
        return first

    blank = [""] * layout.width
    blank[layout.id_index] = row.values[layout.id_index]

    def problem(*indexes: int) -> str | None:
        values = blank.copy()
        for index in indexes:
            values[index] = row.values[index]
        try:
            map_row(plan, row._replace(values=tuple(values)), offer, mode, default_phone_region)
        except RowRejected as rejected:
            return rejected.reason
        return None

    if problem() is not None:   # the external_id itself (too long): the others are judged without it
        blank[layout.id_index] = "x"
    country = next((index for index, field, _, _ in layout.scalars if field == "country"), None)
    bad_country = country is not None and problem(country) is not None
    # A plain string fails only by its length: mapped alone, it would only cost time. A phone
    # number cannot be judged without the country it is read in.
    checked = ({index for index, _, convert, _ in layout.scalars if convert is not None}
               | {index for index, _, convert in layout.attributes if convert is not None} | set(layout.unnamed))
    if not bad_country:
        checked.add(layout.phone_index)
    with_country = () if country is None or bad_country else (country,)
    reasons = [first]
    for index, value in enumerate(row.values):
        if index != layout.id_index and (value := value.strip()) and (index in checked or len(value) > MAX_CHARS):
            reason = problem(index, *(with_country if index == layout.phone_index else ()))
            if reason is not None and reason not in reasons:
                reasons.append(reason)
    return " | ".join(reasons)


def row_external_id(plan: ColumnPlan, row: RawRow) -> str | None:
    """The external_id map_row would read from `row`, without mapping it; None if it has none."""
    if len(row.values) != plan.layout.width:
        return None
    return row.values[plan.layout.id_index].strip() or None


def _remember(memo: dict, value: str, converted: object) -> object:
    """Keep a converted value for the next rows, up to MEMO_ENTRIES values per column."""
    if len(memo) < MEMO_ENTRIES:
        memo[value] = converted
    return converted


def _offer_add(plan: ColumnPlan, offer: str) -> dict:
    """The rpi_offers value for `offer`, built once per plan. Raise RowRejected if too long."""
    normalize.text(offer, "offer folder name")  # raises: too long
    plan.offers[offer] = {"add": [offer]}
    return plan.offers[offer]


def _width_problem(plan: ColumnPlan, width: int) -> str:
    if plan.shifted:
        return (f"row has {width} fields; this file's rows have {plan.layout.width}: RPI's two IDs, "
                f"then the header's {len(plan.header)}")
    return f"row has {width} fields, header has {len(plan.header)}"


def _check_size(attributes: dict) -> None:
    size = len(orjson.dumps(attributes))
    if size > MAX_ATTRIBUTES_BYTES:
        raise RowRejected(f"{ATTRIBUTES} would be {size} bytes; Braze allows "
                          f"{MAX_ATTRIBUTES_BYTES}")


def _configured(settings: dict[str, str], allowed: tuple[str, ...], name: str) -> dict[str, str]:
    """`settings` keyed by header_key; raise ConfigError naming any value not in `allowed`."""
    problems = [f"mapping.{name}.{key}: {value!r} is not one of {', '.join(allowed)}"
                for key, value in settings.items() if value not in allowed]
    if problems:
        raise ConfigError(problems)
    return {normalize.header_key(key): value for key, value in settings.items()}


def _targets(names: tuple[str, ...], fields: dict[str, str],
             positional: bool) -> list[tuple[int, str, str]]:
    """(index, target, header) per column; a target is a field name or "rpi_cdp_attributes.key"."""
    columns = []
    taken: dict[str, int] = {}
    unnamed_prepended = positional and names[:2] == ("", "")
    last_named = max((index for index, name in enumerate(names) if name), default=-1)
    for index, name in enumerate(names):
        if unnamed_prepended and index < 2:
            target = PREPENDED[index]
        elif index > last_named:
            columns.append((index, UNNAMED, name))
            continue
        elif not name:
            raise BadFileError(f"column {index + 1} has no name in the header {_quoted(names)}")
        else:
            key = normalize.header_key(name)
            target = fields.get(key) or DEFAULT_FIELDS.get(key)
            target = target or f"{ATTRIBUTES}.{normalize.attribute_key(name)}"
        if target in taken:
            first = taken[target]
            raise BadFileError(
                f"columns {first + 1} ({normalize.quote(names[first])}) and {index + 1} "
                f"({normalize.quote(name)}) both map to "
                f"{target}, in the header {_quoted(names)}")
        taken[target] = index
        columns.append((index, target, name))
    return columns


def _layout(columns: list[tuple[int, str, str]], types: dict[str, str]) -> Layout:
    """The layout of rows with one value per column (a row is as wide as `columns` is long)."""
    scalars, arrays, attributes, unnamed = [], [], [], []
    id_index, phone_index = -1, None
    for index, target, name in columns:
        if target == UNNAMED:
            unnamed.append(index)
        elif target == "external_id":
            id_index = index
        elif target == "phone":
            phone_index = index
        elif target in _SCALAR_CONVERTERS:
            scalars.append((index, target, _SCALAR_CONVERTERS[target], {} if target in _MEMOISED else None))
        elif target in ARRAY_FIELDS:
            arrays.append((index, target))
        else:
            key = target.removeprefix(ATTRIBUTES + ".")
            column_type = types.get(normalize.header_key(name), "string")
            attributes.append((index, key, _attribute_converter(key, name, column_type)))
    return Layout(len(columns), id_index, phone_index, tuple(scalars), tuple(arrays), tuple(attributes),
                  tuple(unnamed))


def _attribute_converter(key: str, name: str, column_type: str) -> Convert | None:
    """None for plain strings; a key too long for Braze rejects only rows with a value there."""
    if len(key) > MAX_CHARS:
        return partial(_reject, f"column {normalize.quote(name)} makes a {ATTRIBUTES} key of "
                                f"{len(key)} characters; Braze allows {MAX_CHARS}")
    if column_type == "string":
        return None
    return partial(normalize.TYPE_CONVERTERS[column_type], field=f"{ATTRIBUTES}.{key}")


def _reject(reason: str, value: str) -> object:
    """A converter that refuses every value."""
    raise RowRejected(reason)


def _quoted(names: tuple[str, ...]) -> str:
    """The header for an error message, cut short: a file without line breaks is one huge cell."""
    text = repr(list(names))
    return text if len(text) <= 500 else text[:500] + "...]"
