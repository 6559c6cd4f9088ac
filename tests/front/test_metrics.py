"""The front's own metrics (serve/front/metrics.py) and Triton's, from a real serve + Triton.

The parsing and the log follower are checked on their own first (a real
nginx rendered from serve's template writes the log whose rotation is
tested), then one `serve` with both metric sets on takes traffic of every
kind and both endpoints are scraped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import promql_parser
import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serve.artifacts.archives import ExtractionLimits
from serve.artifacts.environments import EnvironmentCache
from serve.errors import ConfigError
from serve.front.access_log import AccessLogFollower, content_type_of, route_of
from serve.front.metrics import FrontMetrics
from serve.front.nginx import FrontConfig, nginx_argv
from serve.machine import host
from serve.settings import Settings
from tests.conftest import (
    REPO_ROOT,
    ServeProcess,
    add_request,
    binary_add_request,
    free_port,
    front_config,
    serve_env,
    write_add_model,
)

StartServe = Callable[..., ServeProcess]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def samples_of(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry at least `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def exported_names(exposition: str) -> set[str]:
    """Sample names as Prometheus stores them (the parser above adds _total to counters)."""
    return {
        match.group()
        for line in exposition.splitlines()
        if line and not line.startswith("#")
        if (match := re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line))
    }


def collect(metrics: FrontMetrics) -> Samples:
    registry = CollectorRegistry()
    registry.register(metrics)
    return samples_of(generate_latest(registry).decode())


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "route"),
    [
        ("/ping", "/ping"),
        ("/invocations", "/invocations"),
        ("/invocations?x=1", "/invocations"),
        ("/models", "/models"),
        ("/models?next_page_token=abc", "/models"),
        ("/models/5f2a", "/models/{name}"),
        ("/models/team%20a+b.tar.gz/invoke", "/models/{name}/invoke"),
        ("/models/a%2Fb/invoke", "/models/{name}/invoke"),
        ("/models//invoke", "other"),
        ("/models/a/b/invoke", "other"),
        ("/v2/models/add/infer", "other"),
        ("-", "other"),
    ],
)
def test_routes_are_templates_not_names(uri: str, route: str) -> None:
    assert route_of(uri) == route


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("-", "none"),
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        (
            "application/vnd.sagemaker-triton.binary+json;json-header-size=123",
            "application/vnd.sagemaker-triton.binary+json",
        ),
        ("text/csv", "text/csv"),
        ("image/png", "image/*"),
        ("application/x-made-up-by-a-caller", "other"),
    ],
)
def test_content_types_are_bounded(raw: str, label: str) -> None:
    assert content_type_of(raw) == label


def test_access_log_lines_become_counters_and_histograms() -> None:
    metrics = FrontMetrics()
    metrics.observe_lines(
        [
            b"200\t0.002\tPOST\t/invocations\tapplication/json\t300\t250",
            b"200\t0.004\tPOST\t/invocations\tapplication/json\t300\t250",
            b"400\t0.030\tPOST\t/invocations\tapplication/json\t20\t90",
            b"200\t0.000\tGET\t/ping\t-\t80\t60",
            b"200\t4.200\tPOST\t/models\tapplication/json\t120\t40",
            b"507\t1.000\tPOST\t/models\tapplication/json\t120\t40",
            b"409\t0.001\tPOST\t/models\tapplication/json\t120\t40",
            b"200\t0.300\tDELETE\t/models/5f2a\t-\t70\t40",
            b"404\t0.001\tDELETE\t/models/nope\t-\t70\t40",
            b"200\t0.001\tBREW\t/coffee\t-\t70\t40",
            b"not a log line",
            b"20x\t0.001\tGET\t/ping\t-\t1\t1",
        ]
    )
    samples = collect(metrics)
    requests_total = "serve_requests_total"
    assert value(
        samples,
        requests_total,
        route="/invocations",
        method="POST",
        content_type="application/json",
        code="200",
    ) == (2)
    assert value(
        samples,
        requests_total,
        route="/invocations",
        method="POST",
        content_type="application/json",
        code="400",
    ) == (1)
    assert (
        value(
            samples, requests_total, route="other", method="other", content_type="none", code="200"
        )
        == 1
    )
    bucket = "serve_request_duration_seconds_bucket"
    invocations = {"route": "/invocations", "content_type": "application/json"}
    assert value(samples, bucket, le="0.001", **invocations) == 0
    assert value(samples, bucket, le="0.0025", **invocations) == 1
    assert value(samples, bucket, le="0.005", **invocations) == 2
    assert value(samples, bucket, le="+Inf", **invocations) == 3
    assert value(samples, "serve_request_duration_seconds_sum", **invocations) == pytest.approx(
        0.036
    )
    assert value(samples, "serve_request_received_bytes_total", route="/invocations") == 620
    assert value(samples, "serve_response_sent_bytes_total", route="/invocations") == 590
    assert value(samples, "serve_model_loads_total", outcome="success") == 1
    assert value(samples, "serve_model_loads_total", outcome="insufficient_memory") == 1
    assert value(samples, "serve_model_loads_total", outcome="already_loaded") == 1
    assert value(samples, "serve_model_load_duration_seconds_count") == 1
    assert value(samples, "serve_model_load_duration_seconds_sum") == pytest.approx(4.2)
    assert value(samples, "serve_model_unloads_total", outcome="success") == 1
    assert value(samples, "serve_model_unloads_total", outcome="not_loaded") == 1
    assert value(samples, "serve_access_log_malformed_lines_total") == 2


def test_environment_cache_counters_are_read_from_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "env"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "activate").write_text("# sourced by the Python backend\n")
    site = folder / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
    site.mkdir(parents=True)
    (site / "marker.txt").write_text("x" * 5000)
    archive = tmp_path / "env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    stub = tmp_path / "triton_python_backend_stub"
    stub.write_text("")
    cache = EnvironmentCache(tmp_path / "cache", ExtractionLimits())
    metrics = FrontMetrics()
    metrics.watch_environment_cache(cache)
    assert value(collect(metrics), "serve_environment_cache_misses_total") == 0

    cache.materialize(archive, {PYTHON_VERSION: stub})
    cache.materialize(archive, {PYTHON_VERSION: stub})
    samples = collect(metrics)
    assert value(samples, "serve_environment_cache_misses_total") == 1
    assert value(samples, "serve_environment_cache_hits_total") == 1
    assert value(samples, "serve_environment_cache_extracted_bytes_total") >= 5000


# --- settings --------------------------------------------------------------------------


def test_metrics_port_defaults_next_to_tritons_and_can_be_set_or_turned_off() -> None:
    assert Settings.from_environ({}).serve_metrics_port is None
    on = {"SAGEMAKER_TRITON_ALLOW_METRICS": "true"}
    assert Settings.from_environ(on).serve_metrics_port == 8003
    moved = {**on, "SAGEMAKER_TRITON_METRICS_PORT": "9100"}
    assert Settings.from_environ(moved).serve_metrics_port == 9101
    assert Settings.from_environ({**on, "SERVE_METRICS_PORT": "off"}).serve_metrics_port is None
    assert Settings.from_environ({"SERVE_METRICS_PORT": "9300"}).serve_metrics_port == 9300


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SERVE_METRICS_PORT": "http"}, "SERVE_METRICS_PORT='http' must be a positive"),
        ({"SERVE_METRICS_PORT": "70000"}, "SERVE_METRICS_PORT=70000 is not a TCP port"),
        ({"SERVE_METRICS_PORT": "8080"}, "SERVE_METRICS_PORT=8080 is also SAGEMAKER_BIND_TO_PORT"),
        (
            {
                "SAGEMAKER_TRITON_ALLOW_METRICS": "true",
                "SAGEMAKER_TRITON_METRICS_PORT": "9000",
                "SERVE_METRICS_PORT": "9000",
            },
            "SERVE_METRICS_PORT=9000 is also SAGEMAKER_TRITON_METRICS_PORT",
        ),
        (
            {"SAGEMAKER_SAFE_PORT_RANGE": "9000-9100", "SERVE_METRICS_PORT": "8003"},
            "SERVE_METRICS_PORT=8003 is outside SAGEMAKER_SAFE_PORT_RANGE=9000-9100",
        ),
        (
            {
                "SAGEMAKER_SAFE_PORT_RANGE": "9000-9100",
                "SAGEMAKER_TRITON_ALLOW_METRICS": "true",
                "SAGEMAKER_TRITON_METRICS_PORT": "9100",
            },
            "SERVE_METRICS_PORT=9101 is outside SAGEMAKER_SAFE_PORT_RANGE=9000-9100",
        ),
    ],
)
def test_bad_metrics_ports_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_environ(environ)


# --- the follower, with a real nginx ---------------------------------------------------


@pytest.fixture
def nginx_with_access_log() -> Iterator[tuple[int, FrontConfig]]:
    """nginx from serve's own template, metrics on; its routes that need no upstream answer.

    Its folder is made as serve's workspace is (under the system's temporary
    folder, 0755): run as root, nginx's workers are `nobody` and must reach it
    to reopen the log.
    """
    workdir = Path(tempfile.mkdtemp(prefix="serve-test-"))
    workdir.chmod(0o755)
    port = free_port()
    front = front_config(
        workdir / "front",
        {"SAGEMAKER_BIND_TO_PORT": str(port), "SERVE_METRICS_PORT": str(free_port())},
        triton_port=free_port(),
    )
    nginx = subprocess.Popen(
        nginx_argv(front.write()), stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # HEAD, so the probe does not count among the test's GET requests.
                requests.head(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        yield port, front
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_follower_reads_every_line_across_rotations(
    nginx_with_access_log: tuple[int, FrontConfig],
) -> None:
    port, front = nginx_with_access_log
    access_log = front.access_log()
    assert access_log is not None
    metrics = FrontMetrics()
    rotations = []

    def reopen() -> None:
        rotations.append(time.monotonic())
        os.kill(int(front.pid_file().read_text()), signal.SIGUSR1)

    follower = AccessLogFollower(
        access_log,
        metrics.observe_lines,
        reopen,
        rotate_bytes=20_000,
        poll_seconds=0.02,
        switch_grace_seconds=0.3,
    )
    follower.start()
    sent = 0
    with requests.Session() as session:
        deadline = time.monotonic() + 20
        while (len(rotations) < 3 or sent < 2000) and time.monotonic() < deadline:
            for _ in range(100):
                assert session.get(f"http://127.0.0.1:{port}/nothing", timeout=5).status_code == 404
            sent += 100
            time.sleep(0.01)
    assert len(rotations) >= 3

    def counted() -> float:
        return value(
            collect(metrics),
            "serve_requests_total",
            route="other",
            method="GET",
            content_type="none",
            code="404",
        )

    # nginx flushes its buffer at least once a second.
    deadline = time.monotonic() + 5
    while counted() < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    follower.stop()
    assert counted() == sent
    assert value(collect(metrics), "serve_access_log_malformed_lines_total") == 0
    # Old files are gone once read: only the current one is left, and it is small.
    assert access_log.stat().st_size < 200_000
    assert sorted(p.name for p in access_log.parent.glob("access.log*")) == ["access.log"]


# --- a real serve + Triton, both metric sets on ----------------------------------------


class MetricsServer:
    def __init__(self, server: ServeProcess, triton_metrics: str, front_metrics: str, opt_ml: Path):
        self.server = server
        self.triton_metrics = triton_metrics
        self.front_metrics = front_metrics
        self.opt_ml = opt_ml

    def scrape(self, which: str) -> str:
        url = self.triton_metrics if which == "triton" else self.front_metrics
        response = requests.get(url, timeout=5)
        assert response.status_code == 200
        return response.text


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    """One serve on the add model, Triton's and the front's metrics on, shared by tests here."""
    root = tmp_path_factory.mktemp("metrics")
    opt_ml = root / "opt_ml"
    write_add_model(opt_ml / "model")
    port, triton_metrics, front_metrics = free_port(), free_port(), free_port()
    # Both metric ports inside the safe range, as SageMaker requires of every listener,
    # with room above them for Triton's internal ones.
    safe_range = f"{min(triton_metrics, front_metrics)}-{max(triton_metrics, front_metrics) + 20}"
    env = serve_env(
        opt_ml,
        port,
        SAGEMAKER_TRITON_ALLOW_METRICS="true",
        SAGEMAKER_TRITON_METRICS_PORT=str(triton_metrics),
        SERVE_METRICS_PORT=str(front_metrics),
        SAGEMAKER_SAFE_PORT_RANGE=safe_range,
    )
    server = ServeProcess(env, port, root)
    try:
        server.wait_ready()
        yield MetricsServer(
            server,
            f"http://127.0.0.1:{triton_metrics}/metrics",
            f"http://127.0.0.1:{front_metrics}/metrics",
            opt_ml,
        )
    finally:
        server.stop()


ADD = add_request([1, 2, 3, 4], [10, 20, 30, 40])


def send_traffic(url: str) -> dict[tuple[str, str, str, str], int]:
    """Requests of every kind; returns how many of each (route, method, type, code) were sent."""
    sent: dict[tuple[str, str, str, str], int] = {}

    def count(route: str, method: str, content_type: str, response: requests.Response) -> None:
        key = (route, method, content_type, str(response.status_code))
        sent[key] = sent.get(key, 0) + 1

    json_type = "application/json"
    with requests.Session() as session:
        for _ in range(5):
            response = session.post(f"{url}/invocations", json=ADD, timeout=10)
            assert response.status_code == 200
            count("/invocations", "POST", json_type, response)
        body, binary_type = binary_add_request()
        response = session.post(
            f"{url}/invocations", data=body, headers={"Content-Type": binary_type}, timeout=10
        )
        assert response.status_code == 200
        count("/invocations", "POST", "application/vnd.sagemaker-triton.binary+json", response)
        response = session.post(
            f"{url}/invocations", data=b"{nope", headers={"Content-Type": json_type}, timeout=10
        )
        assert response.status_code == 400
        count("/invocations", "POST", json_type, response)
        response = session.get(f"{url}/invocations", timeout=10)
        assert response.status_code == 405
        count("/invocations", "GET", "none", response)
        response = session.get(f"{url}/v2/models/add", timeout=10)
        assert response.status_code == 404
        count("other", "GET", "none", response)
    return sent


def test_front_metrics_count_real_traffic(metrics_server: MetricsServer) -> None:
    before = samples_of(metrics_server.scrape("front"))
    sent = send_traffic(metrics_server.server.url)

    def delta(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    def all_counted() -> bool:
        samples = samples_of(metrics_server.scrape("front"))
        return all(
            delta(samples, "serve_requests_total", route=r, method=m, content_type=t, code=c) == n
            for (r, m, t, c), n in sent.items()
        )

    metrics_server.server.wait_until(all_counted, 5, "the front's metrics to count the requests")
    samples = samples_of(metrics_server.scrape("front"))
    invocations = {"route": "/invocations", "content_type": "application/json"}
    assert delta(samples, "serve_request_duration_seconds_count", **invocations) == 6
    assert delta(samples, "serve_request_duration_seconds_bucket", le="+Inf", **invocations) == 6
    assert delta(samples, "serve_request_received_bytes_total", route="/invocations") > 7 * 100
    assert (
        value(
            samples,
            "serve_requests_total",
            route="/ping",
            method="GET",
            content_type="none",
            code="200",
        )
        >= 1
    )

    # The single model was loaded at start, once.
    assert value(samples, "serve_model_loads_total", outcome="success") == 1
    assert value(samples, "serve_model_load_duration_seconds_count") == 1
    assert value(samples, "serve_access_log_malformed_lines_total") == 0
    assert value(samples, "process_resident_memory_bytes") > 0

    triton = samples_of(metrics_server.scrape("triton"))
    # The parser names Triton's counters with _total, as it names every counter.
    assert matching(triton, "nv_inference_request_success_total", model="add") >= 6


def test_tritons_own_metrics_port_has_the_stable_labels_too(
    metrics_server: MetricsServer,
) -> None:
    """SAGEMAKER_TRITON_ALLOW_METRICS: nginx answers on the port, from Triton's loopback one."""
    send_traffic(metrics_server.server.url)
    samples = samples_of(metrics_server.scrape("triton"))
    namespaces = {dict(labels).get("namespace") for _, labels in triton_series(samples)}
    assert namespaces == {str(metrics_server.opt_ml / "model")}
    (pid,) = metrics_server.server.child_pids("tritonserver", direct=True)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert "--metrics-address=127.0.0.1" in argv
    port = metrics_server.triton_metrics.split(":")[2].split("/")[0]
    assert f"--metrics-port={port}" not in argv
    wrong = requests.get(metrics_server.triton_metrics.replace("/metrics", "/v2"), timeout=5)
    assert wrong.status_code == 404 and wrong.json()["error"]


def test_access_log_stays_off_without_metrics(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(
        opt_ml, SERVE_WORKDIR=str(enterable_tmp), SERVE_METRICS_PATH="off"
    ).wait_ready()
    config = (enterable_tmp / "run" / "front" / "nginx.conf").read_text()
    assert "access_log off;" in config and "log_format" not in config
    assert requests.post(f"{server.url}/invocations", json=ADD, timeout=10).status_code == 200


def test_scrapes_while_traffic_flows_do_not_disturb_it(metrics_server: MetricsServer) -> None:
    stop = threading.Event()
    failures: list[str] = []

    def scrape_continuously() -> None:
        while not stop.is_set():
            try:
                metrics_server.scrape("front")
            except (AssertionError, requests.RequestException) as exc:
                failures.append(repr(exc))

    scraper = threading.Thread(target=scrape_continuously)
    scraper.start()
    try:
        with requests.Session() as session:
            for _ in range(50):
                url = f"{metrics_server.server.url}/invocations"
                assert session.post(url, json=ADD, timeout=10).status_code == 200
    finally:
        stop.set()
        scraper.join(10)
    assert failures == []


# --- the monitoring kit: every metric the dashboard queries exists ---------------------

MONITORING = REPO_ROOT / "container" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Triton exports these on GPU hosts only.
GPU_ONLY = ("nv_gpu_", "nv_energy_")
METRIC_NAME = re.compile(r"\b(?:serve|nv|process)_[a-z0-9_]+\b")


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def test_dashboard_queries_are_valid_promql_over_both_metric_sets() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    for query in queries:
        promql_parser.parse(query.replace("$__rate_interval", "1m"))
    names = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert any(name.startswith("serve_") for name in names)
    assert any(name.startswith("nv_") for name in names)


def test_every_metric_the_dashboard_queries_is_exported(metrics_server: MetricsServer) -> None:
    send_traffic(metrics_server.server.url)

    def exported() -> set[str]:
        return exported_names(scrape_public(metrics_server.server).text)

    queried = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    on_gpu = host.gpu_count(os.environ.get("CUDA_VISIBLE_DEVICES")) > 0
    expected = {name for name in queried if on_gpu or not name.startswith(GPU_ONLY)}
    metrics_server.server.wait_until(
        lambda: expected <= exported(), 5, "every metric the dashboard queries"
    )


def test_prometheus_config_scrapes_the_public_ports_metrics_path() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    ports = {
        int(target.rsplit(":", 1)[1])
        for static in job["static_configs"]
        for target in static["targets"]
    }
    defaults = Settings.from_environ({})
    assert ports == {defaults.port}
    assert job["metrics_path"] == defaults.metrics_path


def test_multi_model_loads_and_unloads_are_counted(opt_ml: Path, start_serve: StartServe) -> None:
    metrics_port = free_port()
    server = start_serve(
        opt_ml, SAGEMAKER_MULTI_MODEL="true", SERVE_METRICS_PORT=str(metrics_port)
    ).wait_ready()
    url = opt_ml / "models" / "7c1e" / "model"
    write_add_model(url)
    load = {"model_name": "7c1e", "url": str(url)}
    assert requests.post(f"{server.url}/models", json=load, timeout=120).status_code == 200
    assert requests.post(f"{server.url}/models", json=load, timeout=120).status_code == 409
    invoked = requests.post(f"{server.url}/models/7c1e/invoke", json=ADD, timeout=30)
    assert invoked.status_code == 200
    # GET /metrics on the public port: the loaded model's series name the models root.
    # Triton counts a request once its answer has gone, so the count may trail it a little.
    server.wait_until(
        lambda: (
            matching(
                samples_of(scrape_public(server).text),
                "nv_inference_request_success_total",
                model="7c1e",
            )
            == 1
        ),
        5,
        "Triton to count the invocation",
    )
    public = samples_of(scrape_public(server).text)
    assert (
        matching(public, "nv_inference_request_success_total", namespace=str(opt_ml / "models"))
        == 1
    )
    assert requests.delete(f"{server.url}/models/7c1e", timeout=60).status_code == 200
    assert requests.delete(f"{server.url}/models/7c1e", timeout=60).status_code == 404

    def scrape() -> Samples:
        return samples_of(requests.get(f"http://127.0.0.1:{metrics_port}/", timeout=5).text)

    server.wait_until(
        lambda: value(scrape(), "serve_model_unloads_total", outcome="not_loaded") == 1,
        5,
        "the unloads to be counted",
    )
    samples = scrape()
    assert value(samples, "serve_model_loads_total", outcome="success") == 1
    assert value(samples, "serve_model_loads_total", outcome="already_loaded") == 1
    assert value(samples, "serve_model_unloads_total", outcome="success") == 1
    assert value(samples, "serve_model_load_duration_seconds_count") == 1
    invoke = {"route": "/models/{name}/invoke", "method": "POST"}
    assert (
        value(
            samples, "serve_requests_total", content_type="application/json", code="200", **invoke
        )
        == 1
    )


# --- GET /metrics on the public port, where SageMaker's detailed observability scrapes ---


def scrape_public(server: ServeProcess, path: str = "/metrics") -> requests.Response:
    return requests.get(f"{server.url}{path}", timeout=10)


def triton_series(samples: Samples) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {key for key in samples if key[0].startswith("nv_inference_")}


@pytest.mark.container
def test_public_port_serves_both_metric_sets_with_labels_stable_across_restarts(
    opt_ml: Path, start_serve: StartServe
) -> None:
    """No SAGEMAKER_TRITON_ALLOW_METRICS, no SERVE_METRICS_PORT: GET /metrics on 8080 as is."""
    write_add_model(opt_ml / "model")
    series = []
    for _ in range(2):
        server = start_serve(opt_ml).wait_ready()
        assert requests.post(f"{server.url}/invocations", json=ADD, timeout=10).status_code == 200

        def counted(server: ServeProcess = server) -> bool:
            samples = samples_of(scrape_public(server).text)
            invocations = {"route": "/invocations", "method": "POST", "code": "200"}
            return matching(samples, "serve_requests_total", **invocations) >= 1

        server.wait_until(counted, 10, "the front's metrics to count the invocation")
        response = scrape_public(server)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = samples_of(response.text)
        assert matching(samples, "nv_inference_request_success_total", model="add") == 1
        assert value(samples, "serve_triton_metrics_up") == 1
        assert value(samples, "process_resident_memory_bytes") > 0
        # Triton names its repository in a label: the user's, not serve's temporary copy.
        namespaces = {
            dict(labels).get("namespace") for name, labels in triton_series(samples) if labels
        }
        assert namespaces == {server.sagemaker_path(opt_ml / "model")}, namespaces
        series.append(triton_series(samples))
        server.stop()
    assert series[0] == series[1]


def test_metrics_path_can_move_or_be_turned_off(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    moved = start_serve(opt_ml, SERVE_METRICS_PATH="/observability/metrics").wait_ready()
    assert scrape_public(moved).status_code == 404
    response = scrape_public(moved, "/observability/metrics")
    assert response.status_code == 200
    assert "nv_inference_request_success" in response.text
    assert "serve_requests_total" in response.text
    assert requests.post(f"{moved.url}/observability/metrics", timeout=5).status_code == 405
    moved.stop()

    off = start_serve(opt_ml, SERVE_METRICS_PATH="off").wait_ready()
    assert scrape_public(off).status_code == 404
    (pid,) = off.child_pids("tritonserver", direct=True)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert "--allow-metrics=false" in argv
    assert not (off.workspace() / "front" / "access.log").exists()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("metrics", "SERVE_METRICS_PATH='metrics' must be a path"),
        ("/invocations", "SERVE_METRICS_PATH='/invocations' is a route"),
        ("/_serve/metrics", "SERVE_METRICS_PATH='/_serve/metrics' is a route"),
        ("/metrics;", "SERVE_METRICS_PATH='/metrics;' must be a path"),
    ],
)
def test_bad_metrics_paths_are_refused(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_environ({"SERVE_METRICS_PATH": path})
