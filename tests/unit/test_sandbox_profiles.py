"""The sandbox's profile rules, straight against ProfileStore (no HTTP)."""

import threading

import pytest

from rpi2braze.sandbox import codes
from rpi2braze.sandbox.nested import is_valid_time
from rpi2braze.sandbox.profiles import ProfileStore

ABSENT = object()


def applied(obj: dict, store: ProfileStore | None = None, external_id: str = "u1") -> tuple[dict | None, dict | None]:
    store = store or ProfileStore()
    error = store.apply(obj)
    return error, store.get(external_id)


# --- identifiers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("obj", "error_type"),
    [
        ({"external_id": "u1", "braze_id": "b1"}, codes.MULTIPLE_PRIMARY_IDENTIFIERS),
        ({"external_id": "u1", "user_alias": {"alias_name": "a", "alias_label": "l"}},
         codes.MULTIPLE_PRIMARY_IDENTIFIERS),
        ({"first_name": "Jon"}, codes.MISSING_IDENTIFIER),
        ({"external_id": ""}, codes.INVALID_IDENTIFIER),
        ({"external_id": 42}, codes.INVALID_IDENTIFIER),
        ({"user_alias": {"alias_name": "a"}}, codes.INVALID_IDENTIFIER),
        ({"external_id": "é" * 494}, codes.EXTERNAL_USER_ID_TOO_LARGE),   # 988 bytes
        ({"email": "not-an-email", "first_name": "Jon"}, codes.EMAIL_BAD_FORMAT),
    ],
)
def test_an_object_without_one_usable_identifier_is_rejected_whole(obj, error_type):
    store = ProfileStore()
    assert store.apply(obj) == {"type": error_type, "input_array": "attributes"}
    assert store.all() == {}


def test_an_external_id_of_987_bytes_is_accepted():
    external_id = "é" * 493 + "a"
    error, profile = applied({"external_id": external_id}, external_id=external_id)
    assert error is None and profile["external_id"] == external_id


@pytest.mark.parametrize(
    ("flag", "created"),
    [(ABSENT, True), (False, True), (True, False)],
)
def test_update_existing_only_decides_whether_a_missing_user_is_created(flag, created):
    obj = {"external_id": "u1", "first_name": "Jon"}
    if flag is not ABSENT:
        obj["_update_existing_only"] = flag
    error, profile = applied(obj)
    assert error is None
    assert (profile is not None) is created


def test_update_existing_only_still_updates_an_existing_user():
    store = ProfileStore()
    store.apply({"external_id": "u1", "first_name": "Jon"})
    assert store.apply({"external_id": "u1", "_update_existing_only": True, "first_name": "Ann"}) is None
    assert store.get("u1")["first_name"] == "Ann"


@pytest.mark.parametrize(("flag", "created"), [(ABSENT, False), (True, False), (False, True)])
def test_an_alias_only_user_is_created_only_with_update_existing_only_false(flag, created):
    obj = {"user_alias": {"alias_name": "n", "alias_label": "l"}, "first_name": "Jon"}
    if flag is not ABSENT:
        obj["_update_existing_only"] = flag
    store = ProfileStore()
    assert store.apply(obj) is None
    aliases = [profile.get("user_aliases") for profile in store.all().values()]
    assert aliases == ([[{"alias_name": "n", "alias_label": "l"}]] if created else [])


def test_an_unknown_braze_id_creates_nothing():
    store = ProfileStore()
    assert store.apply({"braze_id": "000000000000000000000999", "first_name": "Jon"}) is None
    assert store.all() == {}


def test_a_known_braze_id_updates_its_profile():
    store = ProfileStore()
    store.apply({"external_id": "u1"})
    assert store.apply({"braze_id": store.get("u1")["braze_id"], "first_name": "Jon"}) is None
    assert store.get("u1")["first_name"] == "Jon"


def test_email_without_a_primary_prefers_the_profile_with_an_external_id():
    store = ProfileStore()
    store.apply({"external_id": "u1", "email": "jon@example.com"})
    store.apply({"external_id": "u2", "email": "other@example.com"})
    assert store.apply({"email": "jon@example.com", "first_name": "Jon"}) is None
    assert store.get("u1")["first_name"] == "Jon"
    assert len(store.all()) == 2


def test_an_unknown_email_without_a_primary_creates_an_email_only_profile():
    store = ProfileStore()
    assert store.apply({"email": "new@example.com", "first_name": "Ann"}) is None
    [profile] = store.all().values()
    assert (profile["email"], profile["first_name"], "external_id" in profile) == ("new@example.com", "Ann", False)


def test_with_a_primary_identifier_email_is_a_plain_attribute_so_a_duplicate_user_is_created():
    store = ProfileStore()
    store.apply({"email": "jon@example.com"})
    store.apply({"external_id": "u1", "email": "jon@example.com"})
    assert len(store.all()) == 2


def test_a_non_object_is_rejected():
    assert ProfileStore().apply(["external_id", "u1"]) == {"type": codes.NOT_AN_OBJECT, "input_array": "attributes"}


# --- standard fields ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("field", "value", "stored", "error_type"),
    [
        ("email", "jon@example.com", "jon@example.com", None),
        ("email", "jon@example", ABSENT, codes.EMAIL_BAD_FORMAT),
        ("email", "jon doe@example.com", ABSENT, codes.EMAIL_BAD_FORMAT),
        ("email", None, None, None),
        ("country", "AU", "AU", None),
        ("country", "au", "AU", None),
        ("country", "Australia", "AU", None),
        ("country", "Atlantis", None, None),
        ("dob", "1980-12-21", "1980-12-21", None),
        ("dob", "12/21/1980", ABSENT, codes.INVALID_DOB),
        ("dob", "1980-02-30", ABSENT, codes.INVALID_DOB),
        ("gender", "P", "P", None),
        ("gender", None, None, None),
        ("gender", "m", ABSENT, codes.INVALID_GENDER),
        ("gender", "Male", ABSENT, codes.INVALID_GENDER),
        ("phone", "4155552671", "4155552671", None),
        ("phone", "+14155552671", "+14155552671", None),
        ("time_zone", "America/New_York", "America/New_York", None),
        ("time_zone", "Mars/Olympus_Mons", ABSENT, None),
        ("email_subscribe", "opted_in", "opted_in", None),
        ("email_subscribe", "yes", ABSENT, codes.BAD_EMAIL_SUBSCRIPTION_STATE),
        ("push_subscribe", "no", ABSENT, codes.BAD_PUSH_SUBSCRIPTION_STATE),
        ("current_location", {"longitude": -73.99, "latitude": 40.75}, {"longitude": -73.99, "latitude": 40.75}, None),
        ("current_location", {"longitude": -73.99}, ABSENT, codes.BAD_LOCATION_UPDATE),
        ("subscription_groups", {"id": "x"}, ABSENT, codes.BAD_SUBSCRIPTION_GROUP_ARRAY),
        ("subscription_groups", [{"subscription_group_id": "x"}], ABSENT, codes.BAD_SUBSCRIPTION_GROUP_HASH),
        ("subscription_groups", [{"subscription_group_id": "x", "subscription_state": "subscribed"}], ABSENT,
         codes.BAD_SUBSCRIPTION_GROUP_ID),
        ("subscription_groups",
         [{"subscription_group_id": "1b5fe8e6-a1e4-4c1d-9d1f-2a0f0f3c7d11", "subscription_state": "opted_in"}],
         ABSENT, codes.BAD_SUBSCRIPTION_GROUP_STATE),
    ],
)
def test_standard_fields_are_checked_and_the_rest_of_the_object_still_applies(field, value, stored, error_type):
    error, profile = applied({"external_id": "u1", field: value, "first_name": "Jon", "tier": "gold"})
    assert error == ({"type": error_type, "input_array": "attributes"} if error_type else None)
    assert profile.get(field, ABSENT) == stored
    assert (profile["first_name"], profile["custom_attributes"]) == ("Jon", {"tier": "gold"})


def test_standard_fields_stay_out_of_custom_attributes_and_bio_is_dropped():
    _, profile = applied({"external_id": "u1", "last_name": "Snow", "home_city": "Oslo", "bio": "hi"})
    assert profile["last_name"] == "Snow" and profile["home_city"] == "Oslo"
    assert "bio" not in profile and profile["custom_attributes"] == {}


def test_subscription_groups_accumulate_per_group():
    store = ProfileStore()
    group_a, group_b = "1b5fe8e6-a1e4-4c1d-9d1f-2a0f0f3c7d11", "2b5fe8e6-a1e4-4c1d-9d1f-2a0f0f3c7d11"
    for group, state in ((group_a, "subscribed"), (group_b, "unsubscribed")):
        store.apply({"external_id": "u1", "subscription_groups": [
            {"subscription_group_id": group, "subscription_state": state}]})
    assert store.get("u1")["subscription_groups"] == {group_a: "subscribed", group_b: "unsubscribed"}


# --- custom attributes: scalars and arrays -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("before", "update", "after", "error_type"),
    [
        (ABSENT, "x" * 255, "x" * 255, None),
        ("old", "x" * 256, "old", codes.STRING_TOO_LONG),
        ("old", None, ABSENT, None),
        (ABSENT, 7, 7, None),
        (ABSENT, True, True, None),
        (5, {"inc": 2}, 7, None),
        (5, {"inc": -7}, -2, None),
        (ABSENT, {"inc": 3}, 3, None),
        (5, {"inc": "2"}, 5, codes.INVALID_INCREMENT),
        (ABSENT, ["hotdog", "hotdog", "hotdog", "pizza"], ["hotdog", "pizza"], None),
        (ABSENT, [1, "1", True], [1, "1", True], None),
        (["a"], [], [], None),
        (["a"], ["b", ["nested"]], ["a"], codes.INVALID_ARRAY),
        (["a"], ["b", None], ["a"], codes.INVALID_ARRAY),
        (["a", "b"], {"add": ["c"]}, ["a", "b", "c"], None),
        (["a", "b", "c"], {"add": ["a"]}, ["b", "c", "a"], None),
        (["a", "b"], {"remove": ["a", "zzz"]}, ["b"], None),
        (["a", "b"], {"add": ["c"], "remove": ["a"]}, ["b", "c"], None),
        (["a", "b"], {"add": ["a"], "remove": ["a"]}, ["b"], None),
        (ABSENT, {"add": ["a", "a"]}, ["a"], None),
        ("scalar", {"add": ["a"]}, ["a"], None),
        (["a"], {"add": "b"}, ["a"], codes.INVALID_ARRAY),
        (["a"], {"add": [{"k": 1}]}, ["a"], codes.INVALID_ARRAY),
    ],
)
def test_custom_attribute_updates(before, update, after, error_type):
    store = ProfileStore()
    if before is not ABSENT:
        store.apply({"external_id": "u1", "attr": before})
    error, profile = applied({"external_id": "u1", "attr": update}, store)
    assert error == ({"type": error_type, "input_array": "attributes"} if error_type else None)
    assert profile["custom_attributes"].get("attr", ABSENT) == after


def test_adding_at_the_maximum_drops_the_oldest_as_in_brazes_example():
    store = ProfileStore(array_max=4)
    store.apply({"external_id": "u1", "food": ["pizza", "wings", "pasta"]})
    steps = [
        ("fries", ["pizza", "wings", "pasta", "fries"]),
        ("pizza", ["wings", "pasta", "fries", "pizza"]),
        ("ice cream", ["pasta", "fries", "pizza", "ice cream"]),
    ]
    for value, expected in steps:
        store.apply({"external_id": "u1", "food": {"add": [value]}})
        assert store.get("u1")["custom_attributes"]["food"] == expected


def test_setting_an_array_over_the_maximum_keeps_its_first_values():
    _, profile = applied({"external_id": "u1", "tags": ["a", "b", "c"]}, ProfileStore(array_max=2))
    assert profile["custom_attributes"]["tags"] == ["a", "b"]


def test_the_default_maximum_is_500():
    store = ProfileStore()
    store.apply({"external_id": "u1", "ids": {"add": [str(number) for number in range(501)]}})
    ids = store.get("u1")["custom_attributes"]["ids"]
    assert (len(ids), ids[0], ids[-1]) == (500, "1", "500")


# --- custom attributes: nested objects ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("merge", "expected"),
    [
        (False, {"income": "high"}),
        (True, {"education": "MSc", "income": "high", "address": {"city": "Oslo", "zip": "0150"}}),
    ],
)
def test_a_nested_object_replaces_unless_merge_objects_is_true(merge, expected):
    store = ProfileStore()
    store.apply({"external_id": "u1", "cdp": {"education": "MSc", "address": {"city": "Oslo"}}})
    update = {"income": "high"} if not merge else {"income": "high", "address": {"zip": "0150"}}
    store.apply({"external_id": "u1", "_merge_objects": merge, "cdp": update})
    assert store.get("u1")["custom_attributes"]["cdp"] == expected


def test_null_unsets_a_nested_object():
    store = ProfileStore()
    store.apply({"external_id": "u1", "cdp": {"a": 1}})
    store.apply({"external_id": "u1", "cdp": None})
    assert "cdp" not in store.get("u1")["custom_attributes"]


@pytest.mark.parametrize(
    "bad_value",
    [
        {"born": {"$time": "not a date"}},
        {"born": {"$time": "3001-01-01"}},
        {"born": {"$time": None}},
        {"income": None},
        {"the.key": 1},
        {"$key": 1},
        {"a key": 1},
        {"k" * 256: 1},
        {"text": "x" * 256},
        {"$time": "2020-01-01"},           # a time belongs inside an object, not as the attribute itself
        {f"k{index}": "x" * 200 for index in range(600)},   # over 100 KB
    ],
)
def test_one_invalid_nested_value_drops_every_nested_update_of_the_object_but_not_the_rest(bad_value):
    store = ProfileStore()
    store.apply({"external_id": "u1", "cdp": {"kept": True}, "pets": [{"id": 1}]})
    error = store.apply({
        "external_id": "u1", "_merge_objects": True,
        "cdp": bad_value, "other": {"fine": 1}, "pets": {"$add": [{"id": 2}]},
        "tier": "gold", "tags": {"add": ["t"]},
    })
    custom = store.get("u1")["custom_attributes"]
    assert error is None   # Braze drops them silently
    assert (custom["cdp"], custom["pets"], "other" in custom) == ({"kept": True}, [{"id": 1}], False)
    assert (custom["tier"], custom["tags"]) == ("gold", ["t"])


def test_an_invalid_nested_value_in_one_object_does_not_affect_another_object():
    store = ProfileStore()
    store.apply({"external_id": "u1", "cdp": {"income": None}})
    store.apply({"external_id": "u2", "cdp": {"income": "high"}})
    assert "cdp" not in store.get("u1")["custom_attributes"]
    assert store.get("u2")["custom_attributes"]["cdp"] == {"income": "high"}


def test_valid_times_inside_nested_objects_are_stored_as_sent():
    _, profile = applied({"external_id": "u1", "cdp": {"born": {"$time": "1980-01-01"}, "tags": ["a"]}})
    assert profile["custom_attributes"]["cdp"] == {"born": {"$time": "1980-01-01"}, "tags": ["a"]}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2020-05-28", True),
        ("2020-05-28T17:30:00Z", True),
        ("2020-05-28T17:30:00+01:00", True),
        ("2020-05-28T17:30:00", True),
        ("2020-05-28 17:30:00", True),
        ("2020-05-28T17:30:00:123Z", True),
        ("05/28/2020", True),
        ("Thu May 28 17:30:00 UTC 2020", True),
        ("3000-12-31", True),
        ("3001-01-01", False),
        ("28.05.2020", False),
        ("", False),
        (1590686400, False),
    ],
)
def test_time_formats(value, valid):
    assert is_valid_time(value) is valid


# --- custom attributes: arrays of objects ------------------------------------------------------------------

PETS = [{"id": 1, "type": "dog", "name": "Rex"}, {"id": 2, "type": "dog", "name": "Fido"}, {"id": 3, "type": "cat"}]


@pytest.mark.parametrize(
    ("edit", "merge", "expected"),
    [
        ({"$add": [{"id": 4, "type": "fish"}]}, False, PETS + [{"id": 4, "type": "fish"}]),
        ({"$remove": [{"$identifier_key": "type", "$identifier_value": "dog"}]}, False, [PETS[2]]),
        ({"$update": [{"$identifier_key": "id", "$identifier_value": 3, "$new_object": {"name": "Tom"}}]}, True,
         PETS[:2] + [{"id": 3, "type": "cat", "name": "Tom"}]),
        ({"$update": [{"$identifier_key": "id", "$identifier_value": 3, "$new_object": {"name": "Tom"}}]}, False,
         PETS[:2] + [{"name": "Tom"}]),
        # Braze applies $add, then $remove, then $update: an item removed and added in one request ends removed.
        ({"$remove": [{"$identifier_key": "id", "$identifier_value": 5}], "$add": [{"id": 5}]}, False, PETS),
        ({"$update": [{"$identifier_key": "id", "$identifier_value": 5, "$new_object": {"x": 1}}],
          "$add": [{"id": 5}]}, True, PETS + [{"id": 5, "x": 1}]),
    ],
)
def test_array_of_objects_edits(edit, merge, expected):
    store = ProfileStore()
    store.apply({"external_id": "u1", "pets": PETS})
    store.apply({"external_id": "u1", "_merge_objects": merge, "pets": edit})
    assert store.get("u1")["custom_attributes"]["pets"] == expected


def test_an_array_of_objects_is_replaced_by_a_plain_list():
    store = ProfileStore()
    store.apply({"external_id": "u1", "pets": PETS})
    store.apply({"external_id": "u1", "pets": [{"id": 9}]})
    assert store.get("u1")["custom_attributes"]["pets"] == [{"id": 9}]


# --- events, purchases, the store itself -------------------------------------------------------------------

def test_events_and_purchases_are_counted_per_user():
    store = ProfileStore()
    assert store.apply_event({"external_id": "u1", "name": "rented", "time": "2022-12-06T19:20:45Z"}) is None
    assert store.apply_event({"external_id": "u1", "name": "rented", "time": "2022-12-07T19:20:45Z"}) is None
    purchase = {
        "external_id": "u1", "product_id": "p", "currency": "USD", "price": 1.5, "time": "2022-12-06", "quantity": 3,
    }
    assert store.apply_purchase(purchase) is None
    profile = store.get("u1")
    assert profile["custom_events"] == [
        {"name": "rented", "first": "2022-12-06T19:20:45Z", "last": "2022-12-07T19:20:45Z", "count": 2}]
    assert profile["purchases"] == [{"name": "p", "first": "2022-12-06", "last": "2022-12-06", "count": 3}]


@pytest.mark.parametrize(
    ("method", "obj", "error_type"),
    [
        ("apply_event", {"external_id": "u1", "name": "x"}, codes.INVALID_EVENT),
        ("apply_purchase", {"external_id": "u1", "product_id": "p", "currency": "USD", "price": 1, "time": "t",
                            "quantity": 101}, codes.INVALID_PURCHASE),
        ("apply_purchase", {"external_id": "u1", "product_id": "p", "price": 1, "time": "t"}, codes.INVALID_PURCHASE),
    ],
)
def test_bad_events_and_purchases_are_rejected(method, obj, error_type):
    input_array = "events" if method == "apply_event" else "purchases"
    assert getattr(ProfileStore(), method)(obj) == {"type": error_type, "input_array": input_array}


def test_get_returns_a_copy_all_lists_every_profile_and_reset_forgets():
    store = ProfileStore()
    store.apply({"external_id": "u1", "tags": ["a"]})
    store.apply({"external_id": "u2"})
    store.get("u1")["custom_attributes"]["tags"].append("mutated")
    assert store.get("u1")["custom_attributes"]["tags"] == ["a"]
    assert sorted(store.all()) == ["u1", "u2"]
    store.reset()
    assert (store.all(), store.get("u1")) == ({}, None)


def test_concurrent_adds_to_one_array_are_all_kept():
    store = ProfileStore(array_max=10_000)
    store.apply({"external_id": "u1"})

    def add_many(thread_number: int) -> None:
        for number in range(200):
            store.apply({"external_id": "u1", "ids": {"add": [f"{thread_number}-{number}"]}})

    threads = [threading.Thread(target=add_many, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.get("u1")["custom_attributes"]["ids"]) == 1600
