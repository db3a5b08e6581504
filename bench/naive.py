"""The naive baseline rpi2braze is measured against: one request at a time.

    python bench/naive.py FILE --url http://127.0.0.1:PORT [--max-rows N] [--client httpx|http.client]

What a first script would do: csv.DictReader over the export, build each row's attributes object
(standard fields copied as they are, no normalisation; the rpi_* arrays; the other columns under
rpi_cdp_attributes), and POST 75 objects at a time with json.dumps, waiting for each answer
before sending the next. The card's baseline used requests.post, which is not installed here:
this uses one keep-alive httpx.Client (default) or http.client.HTTPConnection, both at least as
fast as requests.post. Prints one JSON line: rows, requests, seconds.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import sys
import time
import urllib.parse

BATCH = 75
STANDARD = ("first_name", "last_name", "email", "country", "dob", "gender", "home_city", "phone")
ARRAYS = {"Output Name": "rpi_audience_outputs", "RPContactID": "rpi_contact_ids",
          "ChannelExecutionID": "rpi_channel_exec_ids"}
SKIP = {"external_id", *STANDARD, *ARRAYS}


def build_object(row: dict, offer: str) -> dict:
    """One row of csv.DictReader to a /users/track attributes object, the obvious way."""
    attributes = {"external_id": row["external_id"], "_update_existing_only": False}
    for field in STANDARD:
        if row.get(field):
            attributes[field] = row[field]
    for column, field in ARRAYS.items():
        if row.get(column):
            attributes[field] = {"add": [row[column]]}
    attributes["rpi_offers"] = {"add": [offer]}
    cdp = {name.lower().replace(" ", "_"): value for name, value in row.items() if name not in SKIP and value}
    if cdp:
        attributes["_merge_objects"] = True
        attributes["rpi_cdp_attributes"] = cdp
    return attributes


class HttpxPoster:
    def __init__(self, url: str, api_key: str):
        import httpx   # here: httpx comes with the test extras, and the http.client run needs none
        self._client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"})

    def post(self, objects: list[dict]) -> int:
        return self._client.post("/users/track", content=json.dumps({"attributes": objects}),
                                 headers={"Content-Type": "application/json"}).status_code


class HttpClientPoster:
    def __init__(self, url: str, api_key: str):
        parts = urllib.parse.urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def post(self, objects: list[dict]) -> int:
        self._connection.request("POST", "/users/track", json.dumps({"attributes": objects}), self._headers)
        response = self._connection.getresponse()
        response.read()
        return response.status


def run(path: str, poster, offer: str, max_rows: int | None) -> dict:
    """Send the file's rows (at most `max_rows`); return rows, requests and seconds taken."""
    started = time.perf_counter()
    rows = requests = 0
    batch: list[dict] = []
    with open(path, newline="", encoding="utf-8") as source:
        for row in csv.DictReader(source):
            if max_rows is not None and rows >= max_rows:
                break
            batch.append(build_object(row, offer))
            rows += 1
            if len(batch) == BATCH:
                requests += _send(poster, batch)
                batch = []
    if batch:
        requests += _send(poster, batch)
    return {"rows": rows, "requests": requests, "seconds": time.perf_counter() - started}


def _send(poster, batch: list[dict]) -> int:
    status = poster.post(batch)
    if status != 201:
        raise SystemExit(f"naive: the sink answered {status}")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--offer", default="Spring Upsell 2024")
    parser.add_argument("--max-rows", type=int)
    parser.add_argument("--client", choices=("httpx", "http.client"), default="httpx")
    arguments = parser.parse_args(argv)
    poster = (HttpxPoster if arguments.client == "httpx" else HttpClientPoster)(arguments.url, arguments.api_key)
    print(json.dumps(run(arguments.file, poster, arguments.offer, arguments.max_rows)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
