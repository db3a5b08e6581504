"""A local Braze stand-in: a real HTTP server that applies Braze's documented /users/track rules.

The daemon's integration tests deliver to it over HTTP on loopback and read the profiles back, through
`POST /users/export/ids`, `GET /_sandbox/profiles` or `SandboxServer.store`. Facts and their sources:
/work/shared/reference/braze-users-track.md; each module's docstring says where the sandbox had to choose.

    server.py             SandboxServer (start/stop, context manager), serve() for the CLI
    handler.py            HTTP plumbing: read, route, answer or drop
    api.py                checks before a Braze endpoint: faults, key, rate limit, media type, size, JSON
    endpoints.py          /users/track and /users/export/ids on decoded bodies
    admin.py              /_sandbox/ test endpoints
    state.py              what a running sandbox holds; RequestRecord
    faults.py             Faults and the seeded FaultInjector
    ratelimit.py          fixed-window RateLimiter and its headers
    profiles.py           ProfileStore: identifier resolution, create-or-update
    identity.py           which user an object names
    standard_fields.py    email, country, dob, gender... checks
    custom_attributes.py  scalars, arrays (add/remove/cap), increments
    nested.py             nested objects, arrays of objects, $time
    codes.py              the error item `type` values
"""

from rpi2braze.sandbox.faults import Faults
from rpi2braze.sandbox.profiles import ProfileStore
from rpi2braze.sandbox.server import SandboxServer, serve
from rpi2braze.sandbox.state import RequestRecord

__all__ = ["Faults", "ProfileStore", "RequestRecord", "SandboxServer", "serve"]
