"""A real S3 server for the tests: moto, serving one request at a time.

moto checks If-None-Match / If-Match and then writes in two steps, so two concurrent PUTs
can both pass the check. A real store (AWS S3, MinIO, R2) makes that atomic; handling one
request at a time gives moto the same guarantee, which the concurrency tests rely on.

usage: s3_server.py HOST PORT
"""

import sys
import threading

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
moto_app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def app(environ, start_response):
    with lock:
        return list(moto_app(environ, start_response))


run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)
