import pickle

import pytest

from rpi2braze.model import Batch, PackedRows, RawRow, WorkflowKey

KEY = WorkflowKey("drop", "Braze Append", "Offer", "42")
GROUPS = (
    (RawRow(2, ("a", "ada@example.com")),),
    (RawRow(3, ("b", "bo@example.com"), None, "RPI_Export_42.txt"), RawRow(9, ("b", "bo2@example.com"))),
    (RawRow(4, (), "row 4 is ragged", "RPI_Export_42.txt"),),
)


def test_packed_rows_read_back_as_the_groups_they_were_made_from():
    packed = PackedRows.pack(GROUPS)
    assert packed.counts == (1, 2, 1)
    assert len(packed) == 3
    assert packed[1] == GROUPS[1] and packed[-1] == GROUPS[-1]
    assert packed[:2] == GROUPS[:2]
    assert list(packed) == list(GROUPS)
    assert packed == GROUPS and packed != GROUPS[:2]


def test_packed_rows_cross_a_pickle_intact():
    crossed = pickle.loads(pickle.dumps(PackedRows.pack(GROUPS)))
    assert crossed.counts == (1, 2, 1)
    assert tuple(crossed) == GROUPS


@pytest.mark.parametrize("rows", [GROUPS, PackedRows.pack(GROUPS)], ids=["tuples", "packed"])
def test_a_batch_counts_rows_the_same_either_way(rows):
    batch = Batch(KEY, 0, 0, (), rows, 100)
    assert batch.row_counts == (1, 2, 1)
    assert batch.row_count == 4


def test_a_raw_row_pickles_to_an_equal_row():
    row = RawRow(7, ("x", "y"), "problem", "f.txt")
    assert pickle.loads(pickle.dumps(row)) == row
