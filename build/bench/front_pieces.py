"""Benchmark: what each piece of serve's nginx config costs on the native path.

One `serve` runs the NCF example (Triton's SageMaker frontend beside it, as in
invocations.py). Copies of the nginx config serve rendered, each with one piece
changed, run as nginx instances of their own in front of the same Triton, so
every path reaches the very same model instances; with serve itself, Triton's
own SageMaker frontend and a bare nginx proxy_pass (bare_proxy.py) they take
turns under wrk, and each path's throughput and CPU per request (nginx's own,
and everything's) are printed. The pieces:

- copy: serve's config unchanged (a control: it should measure as serve does);
- no access log: the log the front's metrics are read from, off;
- JSON unread: JSON bodies go to Triton without the look at their first bytes
  (the mirror subrequest), as if no simple-shape JSON ever came;
- one worker: worker_processes 1 (serve runs two where it has two CPUs or more).

Run: `.venv/bin/python build/bench/front_pieces.py [--server-cpus 0,1 --load-cpus 2-5]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bare_proxy import bare_proxy
from invocations import BARE, REFERENCE, SERVE, cpu_list, measure, report
from load_generators import ncf_body, require_wrk
from serve_under_test import free_port, serve_with_reference

from serve.front.nginx import nginx_binary

Edit = Callable[[str], str]


def _replace(old: str, new: str) -> Edit:
    def edit(config: str) -> str:
        if old not in config:
            raise SystemExit(f"serve's nginx config has no {old!r}: update front_pieces.py")
        return config.replace(old, new)

    return edit


def _no_access_log(config: str) -> str:
    edited = re.sub(r"access_log \S+ serve_metrics[^;]*;", "access_log off;", config)
    if edited == config:
        raise SystemExit("serve's nginx config has no access log: update front_pieces.py")
    return edited


PIECES: dict[str, Edit] = {
    "copy": lambda config: config,
    "no access log": _no_access_log,
    "JSON unread": _replace('"json:0" look_at_body;', '"json:0" triton;'),
    "one worker": _replace("worker_processes 2;", "worker_processes 1;"),
}


def serve_config(serve_pid: int) -> Path:
    """The config file of the nginx serve started (its master is serve's child)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != serve_pid:
                continue
            # nginx rewrites its title: "nginx: master process /usr/sbin/nginx -c FILE ...".
            title = (stat.parent / "cmdline").read_bytes().decode().replace("\0", " ")
            found = re.search(r"nginx.* -c (\S+)", title)
            if found:
                return Path(found.group(1))
    raise SystemExit("serve's nginx was not found")


@contextlib.contextmanager
def nginx_copy(config: str, prefix: Path, work: Path, port: int) -> Iterator[tuple[str, int]]:
    """Run `config` (serve's, edited) on `port`, with its own pid file and access log."""
    work.mkdir(parents=True)
    config = re.sub(r"listen (\S+):\d+ backlog", rf"listen \1:{port} backlog", config, count=1)
    config = re.sub(r"pid \S+;", f"pid {work}/nginx.pid;", config)
    config = re.sub(
        r"access_log \S+ serve_metrics", f"access_log {work}/access.log serve_metrics", config
    )
    (work / "nginx.conf").write_text(config)
    with (work / "nginx.log").open("w") as log:
        nginx = subprocess.Popen(
            [str(nginx_binary()), "-c", str(work / "nginx.conf"), "-p", str(prefix)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        time.sleep(0.5)
        if nginx.poll() is not None:
            raise SystemExit(f"an edited nginx exited: {(work / 'nginx.log').read_text()}")
        yield f"http://127.0.0.1:{port}", nginx.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ncf_food")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-cpus", type=cpu_list)
    parser.add_argument("--load-cpus", type=cpu_list)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--pieces", default=",".join(PIECES), help="comma-separated")
    args = parser.parse_args()
    require_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-pieces-"))
    body_file = work / "body.json"
    body_file.write_text(ncf_body(args.batch))
    everything = os.sched_getaffinity(0)
    env = {"SAGEMAKER_TRITON_LOG_VERBOSE": "0"}
    try:
        with contextlib.ExitStack() as stack:
            if args.server_cpus:
                os.sched_setaffinity(0, args.server_cpus)
            serve = stack.enter_context(
                serve_with_reference(work / "serve", args.model, extra_env=env)
            )
            paths = {
                SERVE: f"{serve.url}/invocations",
                REFERENCE: f"{serve.reference_url}/invocations",
            }
            roots = {SERVE: [serve.pid], REFERENCE: [serve.pid]}
            url, pid = stack.enter_context(bare_proxy(work / "bare", serve.triton_http, args.model))
            paths[BARE], roots[BARE] = f"{url}/invocations", [serve.pid, pid]
            config_path = serve_config(serve.pid)
            rendered = config_path.read_text()
            for name in args.pieces.split(","):
                url, pid = stack.enter_context(
                    nginx_copy(
                        PIECES[name](rendered),
                        config_path.parent,
                        work / name.replace(" ", "_"),
                        free_port(),
                    )
                )
                paths[name], roots[name] = f"{url}/invocations", [serve.pid, pid]
            os.sched_setaffinity(0, args.load_cpus or everything)
            results, cpu = measure(paths, roots, body_file, args)
        args.log = "off"
        report(results, args, cpu, "off")
    finally:
        os.sched_setaffinity(0, everything)


if __name__ == "__main__":
    main()
