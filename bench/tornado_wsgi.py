"""The seed's Tornado peer: the same Flask app under Tornado's WSGIContainer (one process).
  tornado_wsgi.py PORT"""

import asyncio
import sys

from tornado.httpserver import HTTPServer
from tornado.wsgi import WSGIContainer

from sampleapp import create_app


async def main(port: int) -> None:
    server = HTTPServer(WSGIContainer(create_app()))
    server.listen(port, address="127.0.0.1", backlog=2048)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
