"""Header plans and rows mapped to Braze attributes objects, as RPI's exports really look."""

import orjson
import pytest

from rpi2braze import mapping as mapping_module
from rpi2braze.batcher import merge_objects
from rpi2braze.errors import BadFileError, ConfigError, RowRejected
from rpi2braze.mapping import map_row, most_common_width, named_header, plan_columns
from rpi2braze.model import ChannelMode, RawRow
from rpi2braze.settings import MappingSettings

UPSERT_HEADER = ("RPContactID", "ChannelExecutionID", "external_id", "first_name", "last_name",
                 "email", "country", "dob", "gender", "home_city", "phone", "Output Name",
                 "Education", "Income", "Marital Status")


def mapped(header, values, mapping=MappingSettings(), mode=ChannelMode.UPSERT, offer="Spring Offer",
           region="US", row_width=None):
    plan = plan_columns(tuple(header), mapping, row_width)
    return map_row(plan, RawRow(line=2, values=tuple(values)), offer, mode, region)


def rejection(header, values, mapping=MappingSettings(), row_width=None):
    with pytest.raises(RowRejected) as caught:
        mapped(header, values, mapping, row_width=row_width)
    return caught.value.reason


def test_full_upsert_row():
    values = ("81", "5719", "u1", "Ann", "Lee", "ann@example.com", "United States", "1980/12/21",
              "female", "Boston", "(415) 555-2671", "Gold Members", "Masters", "85000", "Married")
    assert mapped(UPSERT_HEADER, values) == {
        "external_id": "u1", "_update_existing_only": False,
        "first_name": "Ann", "last_name": "Lee", "email": "ann@example.com", "country": "US",
        "dob": "1980-12-21", "gender": "F", "home_city": "Boston", "phone": "+14155552671",
        "rpi_contact_ids": {"add": ["81"]}, "rpi_channel_exec_ids": {"add": ["5719"]},
        "rpi_audience_outputs": {"add": ["Gold Members"]}, "rpi_offers": {"add": ["Spring Offer"]},
        "_merge_objects": True,
        "rpi_cdp_attributes": {"education": "Masters", "income": "85000", "marital_status": "Married"},
    }


@pytest.mark.parametrize("mode, update_existing_only", [
    (ChannelMode.UPSERT, False), (ChannelMode.APPEND, True),
])
def test_update_existing_only_follows_the_channel(mode, update_existing_only):
    result = mapped(("external_id", "output_name"), ("u1", "Gold"), mode=mode)
    assert result["_update_existing_only"] is update_existing_only


@pytest.mark.parametrize("spelling", [
    "external_id", "external_Id", "External ID", "EXTERNAL_ID", "External-ID", "externalid",
])
def test_external_id_header_spellings(spelling):
    assert mapped((spelling, "first_name"), ("u1", "Ann"))["external_id"] == "u1"


@pytest.mark.parametrize("spelling, target", [
    ("Output Name", "rpi_audience_outputs"), ("output_name", "rpi_audience_outputs"),
    ("OUTPUT NAME", "rpi_audience_outputs"), ("RPContactID", "rpi_contact_ids"),
    ("rp_contact_id", "rpi_contact_ids"), ("RP Contact ID", "rpi_contact_ids"),
    ("ChannelExecutionID", "rpi_channel_exec_ids"), ("channel_execution_id", "rpi_channel_exec_ids"),
])
def test_array_header_spellings(spelling, target):
    assert mapped(("external_id", spelling), ("u1", "42"))[target] == {"add": ["42"]}


def test_configured_fields_map_other_headers():
    mapping = MappingSettings(fields={"PID": "external_id", "primaryemail": "email",
                                      "Primary Country": "country"})
    result = mapped(("PID", "Primary Email", "Primary Country"), ("p9", "a@example.com", "UK"),
                    mapping)
    assert (result["external_id"], result["email"], result["country"]) == ("p9", "a@example.com", "GB")


def test_unnamed_first_two_columns_are_rpi_prepended_ids():
    result = mapped(("", "", "external_id", "Output Name"), ("81", "5719", "u1", "Gold"))
    assert result["rpi_contact_ids"] == {"add": ["81"]}
    assert result["rpi_channel_exec_ids"] == {"add": ["5719"]}


def test_a_file_whose_rows_have_two_extra_leading_values_carries_the_prepended_ids():
    header = ("external_id", "Output Name", "Education")
    result = mapped(header, ("81", "5719", "u1", "Gold", "Masters"), row_width=5)
    assert result["external_id"] == "u1"
    assert result["rpi_contact_ids"] == {"add": ["81"]}
    assert result["rpi_channel_exec_ids"] == {"add": ["5719"]}
    assert result["rpi_cdp_attributes"] == {"education": "Masters"}
    assert rejection(header, ("u2", "Gold", "PhD"), row_width=5) == (
        "row has 3 fields; this file's rows have 5: RPI's two IDs, then the header's 3")


def test_a_ragged_row_two_values_wide_is_rejected_in_a_file_of_rows_as_wide_as_the_header():
    # "Spring, Gold" unquoted: read as RPI's IDs, it would name the user "Gold"
    header = ("external_id", "Output Name")
    for row_width in (2, None):
        assert rejection(header, ("u-61", "Spring", " Gold", " VIP"), row_width=row_width) == (
            "row has 4 fields, header has 2")


def test_rows_with_two_extra_values_are_ragged_when_the_header_names_the_ids():
    header = ("RPContactID", "ChannelExecutionID", "external_id")
    assert rejection(header, ("1", "2", "81", "5719", "u1"), row_width=5) == "row has 5 fields, header has 3"


@pytest.mark.parametrize("widths, expected", [
    ([5, 5, 5], 5), ([3, 5, 5, 3, 5], 5), ([3, 5], 3), ([7, 7, 5, 5, 3], 5), ([], None), ([0], None)])
def test_the_common_width_outvotes_ragged_rows_and_ignores_unreadable_ones(widths, expected):
    rows = [RawRow(line, ("v",) * width, None if width else "unreadable") for line, width in enumerate(widths)]
    assert most_common_width(rows) == expected


@pytest.mark.parametrize("prepended_columns", ["header", "none"])
def test_prepended_columns_by_name_only(prepended_columns):
    mapping = MappingSettings(prepended_columns=prepended_columns)
    with pytest.raises(BadFileError, match="column 1 has no name"):
        plan_columns(("", "", "external_id"), mapping)
    reason = rejection(("external_id", "Education"), ("81", "5719", "u1", "Masters"), mapping, row_width=4)
    assert reason == "row has 4 fields, header has 2"


def test_empty_and_blank_cells_are_omitted():
    result = mapped(UPSERT_HEADER, ("", " ", "u1") + ("",) * 8 + ("  ", "", "", "\t"))
    assert result == {"external_id": "u1", "_update_existing_only": False,
                      "rpi_offers": {"add": ["Spring Offer"]}}


def test_values_are_stripped():
    result = mapped(("external_id", "first_name", "Education"), (" u1 ", " Ann ", " Masters\t"))
    assert (result["external_id"], result["first_name"]) == ("u1", "Ann")
    assert result["rpi_cdp_attributes"] == {"education": "Masters"}


def test_unknown_gender_is_omitted():
    assert "gender" not in mapped(("external_id", "gender"), ("u1", "Unknown"))


def test_phone_uses_the_given_default_region():
    assert mapped(("external_id", "phone"), ("u1", "020 7183 8750"), region="GB")["phone"] == \
        "+442071838750"


@pytest.mark.parametrize("country, phone, expected", [
    ("GB", "07400 123456", "+447400123456"),
    ("United Kingdom", "020 7183 8750", "+442071838750"),
    ("MX", "55 1234 5678", "+525512345678"),            # +1 551-234-5678 in the US default: valid, and wrong
    ("GB", "2079460018", "+442079460018"),              # +1 207-946-0018 in the US default
    ("DE", "(303) 555-0102", "+493035550102"),          # the row's country wins where both are valid
    ("FR", "(415) 555-2671", "+14155552671"),           # no number in FR: the default region's
    ("CA", "(416) 555-0199", "+14165550199"),
    ("", "(415) 555-2671", "+14155552671"),
    ("GB", "+1 415 555 2671", "+14155552671"),           # a country code always wins
])
def test_a_national_phone_number_is_read_in_the_rows_country_then_in_the_default_region(country, phone, expected):
    assert mapped(("external_id", "country", "phone"), ("u1", country, phone), region="US")["phone"] == expected


@pytest.mark.parametrize("country, phone, where", [
    ("GB", "12345", r"read as GB \(the row's country\), then as US \(mapping.default_phone_region\)\)$"),
    ("", "12345", r"read as US \(mapping.default_phone_region\)\)$"),
    ("MX", "+52 1 55 1234 5678", r"'\+52 1 55 1234 5678' is not a valid phone number$"),   # its own code: no region read
])
def test_a_phone_number_valid_nowhere_says_where_it_was_read(country, phone, where):
    with pytest.raises(RowRejected, match=where):
        mapped(("external_id", "country", "phone"), ("u1", country, phone), region="US")


def test_configured_types():
    mapping = MappingSettings(types={"income": "number", "vip": "boolean", "joined_at": "time"})
    result = mapped(("external_id", "Income", "VIP", "Joined At", "Notes"),
                    ("u1", "85000.5", "yes", "2020-05-28", "0042"), mapping)
    assert result["rpi_cdp_attributes"] == {
        "income": 85000.5, "vip": True, "joined_at": {"$time": "2020-05-28"}, "notes": "0042"}


@pytest.mark.parametrize("column, value, words", [
    ("Income", "85k", "rpi_cdp_attributes.income '85k' is not a number"),
    ("VIP", "maybe", "rpi_cdp_attributes.vip 'maybe' is not a boolean"),
    ("Joined At", "28/05/2020", "rpi_cdp_attributes.joined_at '28/05/2020' is not a date"),
])
def test_bad_typed_values_are_rejected(column, value, words):
    mapping = MappingSettings(types={"income": "number", "vip": "boolean", "joinedat": "time"})
    assert rejection(("external_id", column), ("u1", value), mapping).startswith(words)


@pytest.mark.parametrize("column, value, field", [
    ("email", "ann@@example.com", "email"), ("country", "Atlantis", "country"),
    ("dob", "1980-02-30", "dob"), ("gender", "maybe", "gender"), ("phone", "12345", "phone"),
])
def test_bad_standard_values_are_rejected(column, value, field):
    assert rejection(("external_id", column), ("u1", value)).startswith(f"{field} '{value}'")


@pytest.mark.parametrize("column, field", [
    ("first_name", "first_name"), ("home_city", "home_city"),
    ("Output Name", "rpi_audience_outputs"), ("Education", "rpi_cdp_attributes.education"),
])
def test_values_over_255_characters_are_rejected(column, field):
    assert mapped(("external_id", column), ("u1", "é" * 255))
    reason = rejection(("external_id", column), ("u1", "é" * 256))
    assert reason.startswith(field) and "256 characters; Braze allows 255" in reason


def test_an_offer_name_over_255_characters_is_rejected():
    plan = plan_columns(("external_id",), MappingSettings())
    with pytest.raises(RowRejected, match="offer folder name"):
        map_row(plan, RawRow(2, ("u1",)), "o" * 256, ChannelMode.UPSERT, "US")


def test_a_1_mb_field_is_rejected_with_a_short_reason():
    reason = rejection(("external_id", "Notes"), ("u1", "x" * 1_000_000))
    assert "1000000 characters" in reason and len(reason) < 300


def test_attributes_over_100_kb_are_rejected():
    header = ("external_id",) + tuple(f"Attribute {number}" for number in range(400))
    assert "rpi_cdp_attributes" in mapped(header, ("u1",) + ("x" * 200,) * 400)
    reason = rejection(header, ("u1",) + ("x" * 255,) * 400)
    assert reason.startswith("rpi_cdp_attributes would be") and "Braze allows 100000" in reason


def test_attribute_key_over_255_characters_rejects_only_rows_with_a_value():
    header = ("external_id", "Long " * 60)
    assert "rpi_cdp_attributes" not in mapped(header, ("u1", ""))
    assert "key of 299 characters" in rejection(header, ("u1", "value"))


def test_no_external_id_column_is_a_bad_file():
    with pytest.raises(BadFileError, match=r"no external_id column in the header \['PID', 'email'\]"):
        plan_columns(("PID", "email"), MappingSettings())


@pytest.mark.parametrize("header, words", [
    (("external_id", "Email", "email"), "columns 2 ('Email') and 3 ('email') both map to email"),
    (("external_id", "Marital Status", "marital_status"),
     "columns 2 ('Marital Status') and 3 ('marital_status') both map to "
     "rpi_cdp_attributes.marital_status"),
    (("external_id", "External ID"), "columns 1 ('external_id') and 2 ('External ID')"),
    (("", "", "RPContactID", "external_id"), "columns 1 ('') and 3 ('RPContactID')"),
])
def test_two_columns_for_one_target_are_a_bad_file(header, words):
    with pytest.raises(BadFileError, match="header") as caught:
        plan_columns(header, MappingSettings())
    assert words in str(caught.value)


def test_a_trailing_delimiter_on_the_header_line_only_leaves_no_column():
    header = ("external_id", "Education", "")
    plan = plan_columns(header, MappingSettings(), row_width=2)
    assert plan.layout.width == 2 and named_header(header, plan) == ("external_id", "Education")
    row = map_row(plan, RawRow(2, ("u1", "PhD")), "Offer", ChannelMode.UPSERT, "US")
    assert row["rpi_cdp_attributes"] == {"education": "PhD"}


def test_columns_after_the_last_name_a_trailing_delimiter_leaves_must_stay_empty():
    plan = plan_columns(("external_id", "Education", "", ""), MappingSettings())
    row = map_row(plan, RawRow(2, ("u1", "PhD", "", " ")), "Offer", ChannelMode.UPSERT, "US")
    assert row["rpi_cdp_attributes"] == {"education": "PhD"} and "" not in row
    with pytest.raises(RowRejected, match="a value in column 4, which the header leaves unnamed"):
        map_row(plan, RawRow(3, ("u2", "MSc", "", "x")), "Offer", ChannelMode.UPSERT, "US")


@pytest.mark.parametrize("header", [
    ("external_id", "", "Education"), ("", "external_id"), ("", "", "", "external_id"),
])
def test_unnamed_columns_are_a_bad_file(header):
    with pytest.raises(BadFileError, match="has no name in the header"):
        plan_columns(header, MappingSettings())


@pytest.mark.parametrize("mapping, words", [
    (MappingSettings(fields={"pid": "user_id"}), "mapping.fields.pid: 'user_id' is not one of"),
    (MappingSettings(types={"income": "money"}), "mapping.types.income: 'money' is not one of"),
])
def test_unknown_configured_targets_are_config_errors(mapping, words):
    with pytest.raises(ConfigError, match=words):
        plan_columns(("external_id", "income"), mapping)


@pytest.mark.parametrize("values, reason", [
    (("u1", "Ann", "x", "y"), "row has 4 fields, header has 3"),
    (("u1", "Ann", "x", "y", "z", "w"), "row has 6 fields, header has 3"),
    (("u1",), "row has 1 fields, header has 3"),
    (("", "Ann", "Masters"), "row has no external_id (column 1 is empty)"),
    (("   ", "Ann", "Masters"), "row has no external_id (column 1 is empty)"),
])
def test_ragged_rows_and_missing_ids_are_rejected(values, reason):
    assert rejection(("external_id", "first_name", "Education"), values) == reason


def test_a_row_the_reader_could_not_parse_keeps_its_reason():
    plan = plan_columns(("external_id",), MappingSettings())
    row = RawRow(line=7, values=(), error="unterminated quote from line 7")
    with pytest.raises(RowRejected, match="^unterminated quote from line 7$"):
        map_row(plan, row, "Offer", ChannelMode.UPSERT, "US")


def test_external_id_over_987_bytes_is_rejected():
    assert "987 bytes" in rejection(("external_id",), ("x" * 988,))


def test_objects_serialise_to_json():
    mapping = MappingSettings(types={"score": "number", "joined": "time"})
    result = mapped(("external_id", "Score", "Joined", "Name ü"), ("u1", "1e3", "2020-01-01", "ü"),
                    mapping)
    assert orjson.loads(orjson.dumps(result)) == result


@pytest.mark.parametrize("header, values, field", [
    (("external_id", "first_name", "email"), ("u1", "x" * 256, "bad"), "first_name"),
    (("external_id", "email", "first_name"), ("u1", "bad", "x" * 256), "email"),
    (("external_id", "phone", "Output Name"), ("u1", "12345", "x" * 256), "phone"),
    (("external_id", "Output Name", "country"), ("u1", "x" * 256, "Atlantis"), "country"),
    (("external_id", "Education", "Output Name"), ("u1", "x" * 256, "x" * 256), "rpi_audience_outputs"),
])
def test_the_first_bad_value_in_the_objects_order_names_the_reason(header, values, field):
    assert rejection(header, values).startswith(field)


def test_repeated_values_map_alike_row_after_row(monkeypatch):
    monkeypatch.setattr(mapping_module, "MEMO_ENTRIES", 2)  # most values are then never kept
    plan = plan_columns(("external_id", "country", "gender", "dob"), MappingSettings())
    rows = [("u1", "United States", "female", "1980/12/21"), ("u2", "DEU", "Unknown", "19700101"),
            ("u3", "Côte d'Ivoire", "M", "2000-02-29"), ("u4", "uk", "n/a", "1990-01-02")] * 3
    results = [map_row(plan, RawRow(2, values), "Offer", ChannelMode.UPSERT, "US") for values in rows]
    expected = [("US", "F", "1980-12-21"), ("DE", None, "1970-01-01"), ("CI", "M", "2000-02-29"),
                ("GB", "N", "1990-01-02")] * 3
    assert [(result["country"], result.get("gender"), result["dob"]) for result in results] == expected


def test_a_rejected_value_is_rejected_on_every_row():
    plan = plan_columns(("external_id", "country"), MappingSettings())
    for identifier in ("u1", "u2"):
        with pytest.raises(RowRejected, match="country 'Atlantis'"):
            map_row(plan, RawRow(2, (identifier, "Atlantis")), "Offer", ChannelMode.UPSERT, "US")


def test_objects_sharing_the_offer_value_stay_intact_when_the_batcher_merges_them():
    # Every row of a plan carries the same rpi_offers dict for an offer; that is safe only while
    # merging builds new objects instead of changing its inputs, which this pins.
    plan = plan_columns(("external_id", "Output Name"), MappingSettings())

    def row(identifier, output, offer):
        return map_row(plan, RawRow(2, (identifier, output)), offer, ChannelMode.UPSERT, "US")

    first, second = row("u1", "A", "Spring"), row("u1", "B", "Summer")
    merged = merge_objects(first, second)
    assert merged["rpi_offers"] == {"add": ["Spring", "Summer"]}
    assert merged["rpi_audience_outputs"] == {"add": ["A", "B"]}
    assert first == {"external_id": "u1", "_update_existing_only": False,
                     "rpi_audience_outputs": {"add": ["A"]}, "rpi_offers": {"add": ["Spring"]}}
    assert row("u2", "C", "Spring")["rpi_offers"] == {"add": ["Spring"]}


def test_a_too_long_array_value_is_rejected_on_every_row():
    plan = plan_columns(("external_id", "Output Name"), MappingSettings())
    for identifier in ("u1", "u2"):
        with pytest.raises(RowRejected, match="rpi_audience_outputs 'x"):
            map_row(plan, RawRow(2, (identifier, "x" * 256)), "Offer", ChannelMode.UPSERT, "US")


def every_reason(header, values):
    first = rejection(header, values)
    plan = plan_columns(tuple(header), MappingSettings())
    return mapping_module.every_problem(plan, RawRow(line=2, values=tuple(values)), "Spring Offer",
                                        ChannelMode.UPSERT, "US", first)


EVERY = ("external_id", "email", "dob", "phone", "country", "Tier")


@pytest.mark.parametrize("values, reasons", [
    (("u1", "bad", "1800-01-01", "12", "GB", "x" * 300),
     ["email 'bad' is not a valid", "dob '1800-01-01' is not between", "phone '12' is not a valid phone number "
      "(numbers without +country code are read as GB (the row's country)", "rpi_cdp_attributes.tier 'xxx"]),
    # a bad country is named once, and the phone is not judged without it ("030 1234567" is fine in DE)
    (("u1", "a@b.co", "", "030 1234567", "Germny", ""), ["country 'Germny' is not a known country"]),
    # an external_id too long hides nothing else
    (("u" * 990, "bad", "", "", "", ""), ["external_id 'uuu", "email 'bad' is not a valid"]),
    (("u1", "bad", "", "", "", ""), ["email 'bad' is not a valid"]),
])
def test_every_problem_of_a_rejected_row_is_named_in_order(values, reasons):
    found = every_reason(EVERY, values).split(" | ")
    assert len(found) == len(reasons) and all(item.startswith(reason) for item, reason in zip(found, reasons))


@pytest.mark.parametrize("values", [("u1", "a", "b"), ("", "bad", "1800-01-01", "12", "GB", "")],
                         ids=["ragged", "no-external-id"])
def test_a_row_rejected_as_a_whole_keeps_its_one_reason(values):
    assert every_reason(EVERY, values) == rejection(EVERY, values)
