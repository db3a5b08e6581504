"""Batching: limits, one object per user, stable partitions, and no row ever lost or doubled."""

import functools
import random

import orjson
import pytest

from rpi2braze.batcher import build_batches, encode_body, join_body, merge_objects, partition_of
from rpi2braze.model import RawRow, Rejection, WorkflowKey

KEY = WorkflowKey("rpi", "Braze Append", "Offer A", "1234")
LIMIT = 4_000_000


def user(external_id, **fields):
    return {"external_id": external_id, "_update_existing_only": False, **fields}


def rows_for(objects, first_line=2):
    return [(RawRow(line, (obj["external_id"],)), obj) for line, obj in enumerate(objects, first_line)]


def batches_of(items, partitions=1, max_objects=75, max_bytes=LIMIT):
    return list(build_batches(items, KEY, partitions, max_objects, max_bytes))


CDP = "rpi_cdp_attributes"
FLAGS = ("_update_existing_only", "_merge_objects")
MERGE_CASES = [
    pytest.param({"email": "a@x.com", "first_name": "A"}, {"email": "b@x.com"},
                 {"email": "b@x.com", "first_name": "A"}, id="scalar-later-wins-earlier-kept"),
    pytest.param({"email": "a@x.com"}, {"country": "US"},
                 {"email": "a@x.com", "country": "US"}, id="keys-united"),
    pytest.param({"rpi_offers": {"add": ["A"]}}, {"rpi_offers": {"add": ["B"]}},
                 {"rpi_offers": {"add": ["A", "B"]}}, id="adds-accumulate"),
    pytest.param({"rpi_offers": {"add": ["A", "B"]}}, {"rpi_offers": {"add": ["B", "C", "A"]}},
                 {"rpi_offers": {"add": ["A", "B", "C"]}}, id="adds-no-duplicates-earlier-first"),
    pytest.param({"rpi_offers": {"add": ["A"]}}, {"rpi_contact_ids": {"add": ["7"]}},
                 {"rpi_offers": {"add": ["A"]}, "rpi_contact_ids": {"add": ["7"]}}, id="different-arrays"),
    pytest.param({CDP: {"tier": "gold", "score": "1"}}, {CDP: {"score": "2", "new": "x"}},
                 {CDP: {"tier": "gold", "score": "2", "new": "x"}}, id="cdp-deep"),
    pytest.param({CDP: {"a": {"b": "1", "c": "2"}}}, {CDP: {"a": {"c": "3"}}},
                 {CDP: {"a": {"b": "1", "c": "3"}}}, id="cdp-nested-deep"),
    pytest.param(dict.fromkeys(FLAGS, True), dict.fromkeys(FLAGS, False), dict.fromkeys(FLAGS, False),
                 id="flags-from-later"),
    pytest.param({"rpi_offers": {"add": ["A"]}}, {"rpi_offers": "x"},
                 {"rpi_offers": "x"}, id="scalar-over-array"),
    pytest.param({"home_city": "Paris"}, {"home_city": {"add": ["x"]}}, {"home_city": {"add": ["x"]}},
                 id="array-over-scalar"),
]


@pytest.mark.parametrize("earlier, later, expected", MERGE_CASES)
def test_merge_rules(earlier, later, expected):
    earlier_copy, later_copy = orjson.loads(orjson.dumps(earlier)), orjson.loads(orjson.dumps(later))
    merged = merge_objects(earlier, later)
    assert merged == expected
    assert (earlier, later) == (earlier_copy, later_copy)  # inputs untouched
    assert merged is not earlier and merged is not later


@pytest.mark.parametrize(
    "external_id, partitions, expected",
    [("123456789", 1, 0), ("123456789", 7, 5), ("123456789", 8, 6), ("123456789", 1000, 262),
     ("user-1", 8, 4), ("user-2", 16, 14), ("ÄÖü-é", 3, 0), ("", 5, 0)],
)
def test_partition_is_crc32_of_utf8(external_id, partitions, expected):
    # 123456789 -> 0xCBF43926 is CRC-32's published check value: the same in every process and run.
    assert partition_of(external_id, partitions) == expected


def test_partition_count_must_be_positive():
    with pytest.raises(ValueError):
        partition_of("user-1", 0)


def test_encode_body_shape():
    assert encode_body([{"external_id": "a"}, {"external_id": "b", "x": 1}]) == (
        b'{"attributes":[{"external_id":"a"},{"external_id":"b","x":1}]}'
    )
    assert encode_body([]) == b'{"attributes":[]}'


@pytest.mark.parametrize(
    "users, max_objects, expected_sizes", [(10, 4, [4, 4, 2]), (8, 4, [4, 4]), (3, 75, [3]), (1, 1, [1])]
)
def test_object_limit(users, max_objects, expected_sizes):
    batches = batches_of(rows_for([user(f"u{i}") for i in range(users)]), max_objects=max_objects)
    assert [len(batch.objects) for batch in batches] == expected_sizes
    assert [batch.number for batch in batches] == list(range(len(expected_sizes)))
    external_ids = [obj["external_id"] for batch in batches for obj in batch.objects]
    assert external_ids == [f"u{i}" for i in range(users)]


@pytest.mark.parametrize("fit", [1, 2, 3])
def test_byte_limit_is_exact(fit):
    objects = [user(f"u{i}", email=f"person{i}@example.com") for i in range(7)]
    limit = len(encode_body(objects[:fit]))  # exactly `fit` objects; one byte less would hold fewer
    batches = batches_of(rows_for(objects), max_bytes=limit)
    assert [len(batch.objects) for batch in batches] == [fit] * (7 // fit) + ([7 % fit] if 7 % fit else [])
    for batch in batches:
        assert batch.size_bytes == len(encode_body(batch.objects)) <= limit


def test_duplicate_user_merged_into_one_object():
    items = rows_for([
        user("u1", email="old@x.com", rpi_audience_outputs={"add": ["Out 1"]}),
        user("u2"),
        user("u1", email="new@x.com", rpi_audience_outputs={"add": ["Out 2"]}),
    ])
    [batch] = batches_of(items)
    assert [obj["external_id"] for obj in batch.objects] == ["u1", "u2"]
    assert batch.objects[0]["email"] == "new@x.com"
    assert batch.objects[0]["rpi_audience_outputs"] == {"add": ["Out 1", "Out 2"]}
    assert [[row.line for row in rows] for rows in batch.rows] == [[2, 4], [3]]
    assert batch.row_count == 3
    assert batch.size_bytes == len(encode_body(batch.objects))


def test_merge_that_would_overflow_starts_new_batch_with_own_object():
    first = user("u1", rpi_cdp_attributes={"a": "x" * 50})
    second = user("u1", rpi_cdp_attributes={"b": "y" * 50})
    limit = len(encode_body([first])) + 10  # each fits alone, the merged object does not
    batches = batches_of(rows_for([first, second]), max_bytes=limit)
    assert [batch.objects for batch in batches] == [(first,), (second,)]
    assert [[row.line for rows in batch.rows for row in rows] for batch in batches] == [[2], [3]]


def test_a_merge_whose_nested_object_would_pass_100_kb_starts_a_new_batch_with_own_object():
    # each row's rpi_cdp_attributes is under Braze's 100 KB (mapping checks that); merged they are not
    first = user("u1", _merge_objects=True, rpi_cdp_attributes={f"a{index}": "x" * 200 for index in range(300)})
    second = user("u1", _merge_objects=True, rpi_cdp_attributes={f"b{index}": "y" * 200 for index in range(300)})
    small = user("u1", _merge_objects=True, rpi_cdp_attributes={"c": "z"})
    batches = batches_of(rows_for([first, second, small]))
    assert [batch.objects for batch in batches] == [(first,), (merge_objects(second, small),)]


def test_a_user_merged_twice_keeps_all_rows_in_order():
    items = rows_for([user("u1", email="a@x.com"), user("u2"), user("u1", email="b@x.com"),
                      user("u3"), user("u1", email="c@x.com")])
    [batch] = batches_of(items)
    assert batch.rows == ((items[0][0], items[2][0], items[4][0]), (items[1][0],), (items[3][0],))
    assert batch.objects[0] == user("u1", email="c@x.com")
    assert batch.encoded[0] == orjson.dumps(batch.objects[0])


def test_same_user_after_its_batch_left_gets_a_new_object():
    items = rows_for([user("u1"), user("u2"), user("u3"), user("u1", email="a@x.com")])
    batches = batches_of(items, max_objects=2)
    external_ids = [[obj["external_id"] for obj in batch.objects] for batch in batches]
    assert external_ids == [["u1", "u2"], ["u3", "u1"]]
    assert batches[1].objects[1] == user("u1", email="a@x.com")


def test_rejections_ride_on_the_next_batch():
    early = Rejection(RawRow(2, ("",)), "no external_id")
    late = Rejection(RawRow(9, ("x",)), "bad email")
    items = [early, *rows_for([user(f"u{i}") for i in range(3)], first_line=3), late]
    batches = batches_of(items, max_objects=2)
    assert [batch.rejected for batch in batches] == [(early,), (late,)]


def test_rejections_only_make_batches_without_objects():
    rejections = [Rejection(RawRow(line, ()), "ragged row") for line in (2, 3, 6)]
    batches = batches_of(rejections, partitions=4)   # a row that names no user goes by line % 4
    assert [(batch.number, batch.partition, batch.objects, batch.rows) for batch in batches] == [
        (2, 2, (), ()), (3, 3, (), ())]
    assert [batch.rejected for batch in batches] == [(rejections[0], rejections[2]), (rejections[1],)]
    assert all(batch.size_bytes == len(encode_body(())) for batch in batches)


def test_a_rejection_naming_a_user_rides_with_that_users_partition():
    rejected = Rejection(RawRow(2, ("u7",)), "bad email", partition_of("u7", 4))
    items = [rejected, *rows_for([user("u7")], first_line=3)]
    batches = batches_of(items, partitions=4)
    assert [(batch.partition, batch.rejected, len(batch.objects)) for batch in batches] == [
        (partition_of("u7", 4), (rejected,), 1)]


def test_a_partition_of_rejections_only_emits_them_before_the_end(monkeypatch):
    monkeypatch.setattr("rpi2braze.batcher.MAX_REJECTIONS_HELD", 3)
    consumed = []

    def stream():
        for line in range(2, 1_002):
            consumed.append(line)
            yield Rejection(RawRow(line, ()), "ragged row")

    first = next(build_batches(stream(), KEY, 1, 75, LIMIT))
    assert [rejection.row.line for rejection in first.rejected] == [2, 3, 4]
    assert len(consumed) == 3       # held rejections are bounded, not the whole file


def test_no_input_no_batches():
    assert batches_of([], partitions=3) == []


def test_oversize_object_is_rejected_and_the_rest_delivered():
    small, huge = user("u1"), user("u2", rpi_cdp_attributes={"blob": "z" * 500})
    limit = 200
    batches = batches_of(rows_for([small, huge, user("u3")]), max_bytes=limit)
    assert [obj["external_id"] for batch in batches for obj in batch.objects] == ["u1", "u3"]
    [rejection] = [rejection for batch in batches for rejection in batch.rejected]
    assert rejection.row.line == 3
    size = len(encode_body([huge]))
    assert rejection.reason == f"attributes object is {size} bytes, over the request limit of {limit}"


@pytest.mark.parametrize(
    "attributes, reason_start",
    [({"email": "a@x.com"}, "attributes object has no external_id"),
     ({"external_id": ""}, "attributes object has no external_id"),
     ({"external_id": "u1", "x": {1, 2}}, "attributes object cannot be encoded as JSON"),
     ({"external_id": "u1\udcff"}, "attributes object cannot be encoded as JSON")],
)
def test_unsendable_object_is_rejected(attributes, reason_start):
    [batch] = batches_of([(RawRow(2, ("v",)), attributes)])
    assert batch.objects == ()
    [rejection] = batch.rejected
    assert rejection.row.line == 2 and rejection.reason.startswith(reason_start)


@pytest.mark.parametrize("arguments", [(0, 75, LIMIT), (4, 0, LIMIT), (4, 75, 17), (4, 75, LIMIT, (2, 2)),
                                       (4, 75, LIMIT, (-1, 2))])
def test_impossible_limits_refused_at_call(arguments):
    with pytest.raises(ValueError):
        build_batches([], KEY, *arguments)


def test_input_is_consumed_lazily():
    consumed = []

    def stream():
        for line in range(2, 10_002):
            consumed.append(line)
            yield RawRow(line, ()), user(f"u{line}")

    first = next(build_batches(stream(), KEY, 2, 10, LIMIT))
    assert len(first.objects) == 10
    assert len(consumed) < 100  # only the open batches are held, not the whole file


def random_items(seed, rows=5_000, users=300):
    """Rows for `users` people, with merges, oversize values and about 5% rejections."""
    generator = random.Random(seed)
    items = []
    for line in range(2, rows + 2):
        raw = RawRow(line, (str(line),), file="RPI_Export_1.txt")
        if generator.random() < 0.05:
            items.append(Rejection(raw, "bad email"))
            continue
        attributes = user(
            f"user-{generator.randrange(users)}",
            email=f"p{line}@example.com",
            rpi_audience_outputs={"add": [f"Output {generator.randrange(3)}"]},
            rpi_cdp_attributes={f"col{generator.randrange(5)}": "v" * value_length(generator)},
        )
        items.append((raw, attributes))
    return items


def value_length(generator):
    return 5_000 if generator.random() < 0.01 else generator.randrange(0, 400)  # 1%: too big to send


@pytest.mark.parametrize("partitions", range(1, 9))
def test_every_row_exactly_once(partitions):
    items = random_items(seed=partitions)
    max_objects = 3 + partitions
    max_bytes = 1_000 + 300 * partitions  # small enough to force byte splits and some oversize rejections
    batches = batches_of(items, partitions, max_objects, max_bytes)

    expected_lines = [item.row.line if isinstance(item, Rejection) else item[0].line for item in items]
    seen_lines = [row.line for batch in batches for rows in batch.rows for row in rows]
    seen_lines += [rejection.row.line for batch in batches for rejection in batch.rejected]
    assert sorted(seen_lines) == expected_lines

    assert_numbered_by_partition(batches, partitions)
    assert any(len(batch.objects) < max_objects for batch in batches[:-partitions])  # bytes did split
    assert any(len(rows) > 1 for batch in batches for rows in batch.rows)  # users were merged
    reasons = [rejection.reason for batch in batches for rejection in batch.rejected]
    assert any("over the request limit" in reason for reason in reasons)
    attributes_by_line = {item[0].line: item[1] for item in items if not isinstance(item, Rejection)}
    partition_by_user = {}
    for batch in batches:
        assert len(batch.objects) <= max_objects
        assert batch.size_bytes == len(encode_body(batch.objects)) <= max_bytes
        assert join_body(batch.encoded) == encode_body(batch.objects)  # encoded once, sent as is
        external_ids = [obj["external_id"] for obj in batch.objects]
        assert len(set(external_ids)) == len(external_ids)
        assert type(batch.rows) is tuple and all(type(rows) is tuple for rows in batch.rows)
        for external_id, obj, rows in zip(external_ids, batch.objects, batch.rows):
            assert partition_by_user.setdefault(external_id, batch.partition) == batch.partition
            assert partition_of(external_id, partitions) == batch.partition
            assert obj == functools.reduce(merge_objects, [attributes_by_line[row.line] for row in rows])

    # A user's rows leave in file order, so their sender never lets a later row overtake.
    lines_by_user = {}
    for batch in batches:
        for obj, rows in zip(batch.objects, batch.rows):
            lines_by_user.setdefault(obj["external_id"], []).extend(row.line for row in rows)
    assert all(lines == sorted(lines) for lines in lines_by_user.values())


def assert_numbered_by_partition(batches, partitions):
    """The k-th batch of partition p is number k * partitions + p."""
    emitted = [0] * partitions
    for batch in batches:
        assert batch.number == emitted[batch.partition] * partitions + batch.partition
        emitted[batch.partition] += 1


@pytest.mark.parametrize("shards", [2, 3])
def test_batching_a_share_of_the_partitions_gives_the_same_batches(shards):
    """What lets several processes batch one file: each takes the rows of its partitions (and
    the rejections placed there) and makes exactly the batches the whole run makes for them."""
    partitions = 6
    items = random_items(seed=7)
    whole = batches_of(items, partitions, 10, 3_000)

    def partition(item):
        if isinstance(item, Rejection):
            return item.row.line % partitions
        return partition_of(item[1]["external_id"], partitions)

    for shard in range(shards):
        share = batches_of([item for item in items if partition(item) % shards == shard], partitions, 10, 3_000)
        assert share == [batch for batch in whole if batch.partition % shards == shard]


def test_same_input_same_batches():
    items = random_items(seed=99)
    assert batches_of(items, 5, 20, 5_000) == batches_of(list(items), 5, 20, 5_000)


def test_a_batch_outside_its_share_is_refused_before_it_leaves():
    """Two processes would make batches with the same number: the batcher stops first."""
    [(row, attributes)] = rows_for([user("u1")])
    share = (partition_of("u1", 4) + 1) % 2, 2       # the share u1's partition is not in
    with pytest.raises(ValueError, match="is not in share"):
        list(build_batches([(row, attributes)], KEY, 4, 75, LIMIT, share))
    assert batches_of([(row, attributes)], partitions=4)   # the whole run takes it
