"""The baseline: a bare aiohttp app (uvloop) that reads the request body and answers 202.

Same route, same body cap, same event loop as Sluice; no parsing, no validation, no
storage. Every Sluice figure in `make bench` is given as a ratio to this one.
"""

import sys

import uvloop
from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=b'{"accepted":0}', content_type="application/json")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/api/v1/ingest/events", handle)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
