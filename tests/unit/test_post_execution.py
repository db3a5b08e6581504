"""parse_post_execution: RPI's Post Execution body in, a PostExecution or a clear ValueError out."""

import json

import pytest

from rpi2braze.post_execution import MAX_BODY_BYTES, PostExecution, parse_post_execution
from samples import RPI_POST_EXECUTION

RPI_SAMPLE = RPI_POST_EXECUTION


def body(document) -> bytes:
    return json.dumps(document).encode()


def test_rpi_sample_parses_to_every_field():
    call = parse_post_execution(body(RPI_SAMPLE))
    assert call == PostExecution(**RPI_SAMPLE)
    assert call.folder_relpath == "Braze Onboarding and Upsert/Spring Welcome/8828"


def test_integers_are_accepted_as_strings():
    call = parse_post_execution(body({**RPI_SAMPLE, "workflowAssociationInstanceID": 8828, "dataflowID": 24951}))
    assert (call.workflowAssociationInstanceID, call.dataflowID) == ("8828", "24951")


def test_only_the_three_path_fields_are_required():
    minimal = {key: RPI_SAMPLE[key] for key in ("workflowAssociationInstanceID", "channelName", "offerName")}
    call = parse_post_execution(body(minimal))
    assert call.channelExecutionID is None and call.interactionID is None
    assert call.folder_relpath == "Braze Onboarding and Upsert/Spring Welcome/8828"


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_an_empty_optional_field_reads_as_absent(empty):
    assert parse_post_execution(body({**RPI_SAMPLE, "clientID": empty})).clientID is None


def test_unknown_keys_from_other_rpi_versions_are_ignored():
    call = parse_post_execution(body({**RPI_SAMPLE, "tenantID": "t-1", "rowCount": 12}))
    assert call == PostExecution(**RPI_SAMPLE)


def test_names_are_kept_exactly_as_rpi_sent_them():
    call = parse_post_execution(body({**RPI_SAMPLE, "offerName": " Offer: 50% off! "}))
    assert call.offerName == " Offer: 50% off! "


def without(key: str) -> dict:
    return {name: value for name, value in RPI_SAMPLE.items() if name != key}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not JSON"),
        (b"channelName=Braze", "not JSON"),
        (b'{"channelName": "Braze"', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (body([RPI_SAMPLE]), "must be a JSON object"),
        (body("8828"), "must be a JSON object"),
        (body(None), "must be a JSON object"),
        (body(without("workflowAssociationInstanceID")), "missing required field 'workflowAssociationInstanceID'"),
        (body(without("channelName")), "missing required field 'channelName'"),
        (body(without("offerName")), "missing required field 'offerName'"),
        (body({**RPI_SAMPLE, "channelName": None}), "missing required field 'channelName'"),
        (body({**RPI_SAMPLE, "offerName": ""}), "field 'offerName' is empty"),
        (body({**RPI_SAMPLE, "offerName": "  "}), "field 'offerName' is empty"),
        (body({**RPI_SAMPLE, "workflowAssociationInstanceID": 88.28}), "must be a string or an integer, not float"),
        (body({**RPI_SAMPLE, "workflowAssociationInstanceID": True}), "must be a string or an integer, not bool"),
        (body({**RPI_SAMPLE, "channelName": ["Braze"]}), "must be a string or an integer, not list"),
        (body({**RPI_SAMPLE, "offerName": {"name": "x"}}), "must be a string or an integer, not dict"),
        (body({**RPI_SAMPLE, "clientID": 3.5}), "field 'clientID' must be a string or an integer"),
        (body({**RPI_SAMPLE, "channelName": "C" * 256}), "longer than 255 characters"),
        (b" " * (MAX_BODY_BYTES + 1), "larger than"),
    ],
    ids=[
        "empty", "form-encoded", "truncated", "not-utf8", "array", "string", "null",
        "no-workflow-id", "no-channel", "no-offer", "null-channel", "empty-offer", "blank-offer",
        "float-id", "bool-id", "list-channel", "object-offer", "float-optional", "long-channel", "too-large",
    ],
)
def test_bodies_not_shaped_like_rpis_are_refused_with_a_reason(raw, reason):
    with pytest.raises(ValueError) as refused:
        parse_post_execution(raw)
    assert reason in str(refused.value)
