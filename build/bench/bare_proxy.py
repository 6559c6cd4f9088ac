"""A bare nginx `proxy_pass` in front of a serve's Triton: the floor of any nginx front.

It does nothing but pass `/invocations` to one of Triton's routes for one model
(infer, or generate_stream for a language model's stream) over kept-alive
loopback connections (no body look, no routing, no access log, no header
rewriting but the one header Triton needs for its binary+json framing, whose
length SageMaker's clients send in the content type). What serve's front costs
above this is what its features cost; what this costs above Triton's own
SageMaker frontend (or its generate_stream) is the extra hop itself, which no
nginx configuration can remove.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from serve_under_test import free_port

from serve.front.nginx import UNPRIVILEGED_USER, nginx_binary

CONFIG = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    keepalive_requests 1000000;
    upstream triton {{
        server {triton};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    map $content_type $binary_header_size {{
        "~json-header-size=(?<size>\\d+)" $size;
        default "";
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /invocations {{
            proxy_pass http://triton/v2/models/{model}/{route};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Inference-Header-Content-Length $binary_header_size;
            proxy_buffering {buffering};
        }}
    }}
}}
"""


@contextlib.contextmanager
def bare_proxy(
    work: Path, triton_http: str, model: str, route: str = "infer"
) -> Iterator[tuple[str, int]]:
    """Run the bare proxy to `triton_http` (host:port) until the block ends: (url, nginx pid).
    With `route` generate_stream, events pass as they come (no buffering), as serve's do."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = f"user {UNPRIVILEGED_USER};\n" if os.geteuid() == 0 else ""
    config = work / "nginx.conf"
    config.write_text(
        CONFIG.format(
            user=user,
            work=work,
            triton=triton_http,
            port=port,
            model=model,
            route=route,
            buffering="off" if route == "generate_stream" else "on",
        )
    )
    log = (work / "nginx.log").open("w")
    nginx = subprocess.Popen(
        [str(nginx_binary()), "-c", str(config), "-p", str(work)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if nginx.poll() is not None:
                raise SystemExit(f"the bare nginx exited: {(work / 'nginx.log').read_text()}")
            try:
                urllib.request.urlopen(f"{url}/", timeout=1)
            except urllib.error.HTTPError:
                break  # 404 from nginx: it listens
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the bare nginx never listened") from None
                time.sleep(0.1)
            else:
                break
        yield url, nginx.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
        log.close()
