"""SAGEMAKER_* variables: validation, and the tritonserver flags they become."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from serve.errors import ConfigError
from serve.settings import (
    OWN_PREFIXES,
    PortRange,
    Settings,
    markdown_tables,
    unread_variables,
    variables,
)
from serve.triton.command import FLAGS, RESERVED_FLAGS, Decision, check_additional_args
from serve.triton.install import help_flags, locate_triton
from tests.conftest import ADD_MODEL_PY, ServeProcess, free_port, triton_argv, write_add_model

StartServe = Callable[..., ServeProcess]


def test_defaults_match_nvidias_serve_script(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    # An empty value counts as unset: serve falls back to NVIDIA's defaults. A misspelt
    # name changes nothing either, but serve says so.
    server = start_serve(
        opt_ml, SAGEMAKER_TRITON_LOG_VERBOSE="", SAGEMAKER_TRITON_LOG_VERBOS="false"
    ).wait_ready()
    assert (
        "SAGEMAKER_TRITON_LOG_VERBOS is set but serve reads no such variable, so it changes "
        "nothing; did you mean SAGEMAKER_TRITON_LOG_VERBOSE"
    ) in server.output
    argv = triton_argv(server)
    for flag in (
        "--model-control-mode=explicit",
        "--model-namespacing=true",
        "--allow-sagemaker=false",
        # Unlike NVIDIA's script: Triton's gRPC is on, on loopback only, for the bidirectional
        # streams (tests/sessions/ check SERVE_BIDIRECTIONAL_STREAMING=false turns it off).
        "--allow-grpc=true",
        "--grpc-address=127.0.0.1",
        # Unlike NVIDIA's script: Triton's metrics are on, on loopback only, for GET /metrics.
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        "--log-verbose=true",
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=1048576",
        "--http-address=127.0.0.1",
        "--load-model=*",
    ):
        assert flag in argv
    assert not any(a.startswith(("--http-thread-count", "--log-info")) for a in argv)


def test_every_sagemaker_triton_variable_reaches_tritonserver(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(opt_ml / "model")
    grpc, metrics = free_port(), free_port()
    server = start_serve(
        opt_ml,
        SAGEMAKER_TRITON_ALLOW_GRPC="true",
        SAGEMAKER_TRITON_GRPC_PORT=str(grpc),
        SAGEMAKER_TRITON_ALLOW_METRICS="true",
        SAGEMAKER_TRITON_METRICS_PORT=str(metrics),
        # The front's own metrics would take metrics + 1, which may be in use.
        SERVE_METRICS_PORT=str(free_port()),
        SAGEMAKER_TRITON_LOG_VERBOSE="0",
        SAGEMAKER_TRITON_LOG_INFO="false",
        SAGEMAKER_TRITON_LOG_WARNING="true",
        SAGEMAKER_TRITON_LOG_ERROR="true",
        SAGEMAKER_TRITON_THREAD_COUNT="6",
        SAGEMAKER_TRITON_BUFFER_MANAGER_THREAD_COUNT="3",
        SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE="8388608",
        SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE="2097152",
        SAGEMAKER_TRITON_TENSORFLOW_VERSION="2",
        SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING="false",
        SAGEMAKER_TRITON_ADDITIONAL_ARGS="--log-format=default --exit-on-error=true",
    ).wait_ready()
    argv = triton_argv(server)
    for flag in (
        "--allow-grpc=true",
        "--grpc-address=0.0.0.0",
        f"--grpc-port={grpc}",
        # Triton's metrics stay on loopback; nginx serves them on the port asked for.
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        "--log-verbose=0",
        "--log-info=false",
        "--log-warning=true",
        "--log-error=true",
        "--http-thread-count=6",
        "--buffer-manager-thread-count=3",
        "--backend-config=python,shm-default-byte-size=8388608",
        "--backend-config=python,shm-growth-byte-size=2097152",
        "--backend-config=tensorflow,version=2",
        "--model-namespacing=false",
        "--log-format=default",
        "--exit-on-error=true",
    ):
        assert flag in argv
    # Asked-for listeners are public, and they answer.
    assert requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).status_code == 200


def test_internal_port_lies_inside_safe_port_range(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    low = free_port()
    server = start_serve(opt_ml, SAGEMAKER_SAFE_PORT_RANGE=f"{low}-{low + 20}").wait_ready()
    http_port = next(int(a.split("=")[1]) for a in triton_argv(server) if "--http-port=" in a)
    assert low <= http_port <= low + 20


def test_public_port_follows_sagemaker_bind_to_port(opt_ml: Path, start_serve: StartServe) -> None:
    write_add_model(opt_ml / "model")
    port = free_port()
    server = start_serve(opt_ml, SAGEMAKER_BIND_TO_PORT=str(port)).wait_ready()
    assert server.port == port
    assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200


def test_ping_mode_live_answers_200_whatever_the_model(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SAGEMAKER_TRITON_OVERRIDE_PING_MODE="live").wait_ready()
    assert requests.get(f"{server.url}/ping", timeout=2).status_code == 200


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SAGEMAKER_BIND_TO_PORT", "http", "positive whole number"),
        ("SAGEMAKER_BIND_TO_PORT", "70000", "not a TCP port"),
        ("SAGEMAKER_SAFE_PORT_RANGE", "9000", "LOW-HIGH"),
        ("SAGEMAKER_SAFE_PORT_RANGE", "9000-8000", "LOW-HIGH"),
        ("SAGEMAKER_TRITON_INFERENCE_TYPE", "predict", "infer, generate, generate_stream"),
        ("SAGEMAKER_TRITON_OVERRIDE_PING_MODE", "healthy", "ready, live"),
        ("SAGEMAKER_TRITON_ALLOW_GRPC", "maybe", "not a boolean"),
        ("SAGEMAKER_TRITON_THREAD_COUNT", "-1", "positive whole number"),
        ("SAGEMAKER_TRITON_ADDITIONAL_ARGS", "--x='unterminated", "cannot be split"),
        ("SERVE_SHUTDOWN_TIMEOUT", "soon", "positive number"),
        ("SAGEMAKER_BATCH", "maybe", "not a boolean"),
        ("SAGEMAKER_BATCH_STRATEGY", "MultiRecord", "SINGLE_RECORD, MULTI_RECORD"),
        ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "0", "positive whole number"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "six", "whole number"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({variable: value})
    assert variable in caught.value.message and message in caught.value.message


def test_public_listener_outside_safe_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="SAGEMAKER_TRITON_METRICS_PORT=8002 is outside"):
        Settings.from_environ(
            {"SAGEMAKER_SAFE_PORT_RANGE": "9000-9100", "SAGEMAKER_TRITON_ALLOW_METRICS": "true"}
        )


def test_paths_derive_from_opt_ml_and_ping_mode_defaults() -> None:
    settings = Settings.from_environ({"OPT_ML": "/tmp/x"})
    assert settings.model_dir == Path("/tmp/x/model")
    assert settings.models_dir == Path("/tmp/x/models")
    assert settings.ping_mode == "ready"
    assert Settings.from_environ({}).model_dir == Path("/opt/ml/model")
    multi = Settings.from_environ({"SAGEMAKER_MULTI_MODEL": "true"})
    assert multi.ping_mode == "live"
    assert Settings.from_environ({"SAGEMAKER_SAFE_PORT_RANGE": "10-20"}).safe_port_range == (
        PortRange(10, 20)
    )


REPO = Path(__file__).resolve().parent.parent
# Upper-case names in serve's code that are not environment variables: config.pbtxt
# parameters, Triton's own, the custom-attributes output, a prefix.
NOT_VARIABLES = {
    "SERVE_PAYLOAD_INPUTS",
    "SERVE_PAYLOAD_OUTPUTS",
    "TRITON_MODEL_DIRECTORY",
    "SAGEMAKER_CUSTOM_ATTRIBUTES",
    "SAGEMAKER_TRITON_",
}


def test_the_configuration_tables_are_the_settings_declarations() -> None:
    reference = (REPO / "docs" / "configuration.md").read_text()
    block = re.search(r"<!-- settings:begin[^>]*-->\n(.*?)<!-- settings:end -->", reference, re.S)
    assert block, "docs/configuration.md lost its generated configuration block"
    assert block.group(1) == markdown_tables(), (
        "docs/configuration.md's tables differ from serve/settings.py: paste the output "
        "of `python -m serve.settings` between the settings markers"
    )


def test_every_variable_serve_names_is_declared_once() -> None:
    declared = [name for v in variables() for name in v.names]
    assert len(declared) == len(set(declared))
    sources = [*REPO.glob("serve/**/*.py"), *REPO.glob("serve/**/*.j2")]
    named = {
        name
        for source in sources
        for name in re.findall(
            r"\b(?:SAGEMAKER|SERVE|TRITON|OMP|CUDA)_[A-Z0-9_]+", source.read_text()
        )
    }
    assert named - NOT_VARIABLES <= set(declared), sorted(named - NOT_VARIABLES - set(declared))


@pytest.mark.parametrize(
    ("variable", "field"),
    [("SERVE_METRICS_PATH", "metrics_path"), ("SERVE_METRICS_PORT", "serve_metrics_port")],
)
def test_off_turns_off_a_setting_that_is_on_by_default(variable: str, field: str) -> None:
    on = Settings.from_environ({"SAGEMAKER_TRITON_ALLOW_METRICS": "true"})
    assert getattr(on, field) is not None
    environ = {variable: "off", "SAGEMAKER_TRITON_ALLOW_METRICS": "true"}
    assert getattr(Settings.from_environ(environ), field) is None


@given(
    st.dictionaries(
        st.sampled_from(["SERVE_", "SAGEMAKER_TRITON_", "SAGEMAKER_", "", "serve_"]).flatmap(
            lambda prefix: st.text(min_size=0, max_size=30).map(lambda rest: prefix + rest)
        ),
        st.text(max_size=10),
        max_size=8,
    )
)
def test_every_unread_variable_of_serves_prefixes_is_named(environ: dict[str, str]) -> None:
    """Whatever the environment holds, each variable of serve's prefixes that no setting
    reads gets one line naming it, and no other variable does."""
    known = {name for variable in variables() for name in variable.names}
    environ |= {"SERVE_V2_JSON_WRITERS": "2", "SERVE_V2_JSON_WRITER": "0"}
    lines = unread_variables(environ)
    assert list(lines) == sorted(
        n for n in environ if n.startswith(OWN_PREFIXES) and n not in known
    )
    assert all(line.startswith(f"{name} is set but") for name, line in lines.items())
    assert "did you mean SERVE_V2_JSON_WRITERS" in lines["SERVE_V2_JSON_WRITER"]


def test_settings_defaults_are_those_an_empty_environment_reads() -> None:
    """The declared default of every field is what `from_environ` gives with nothing set."""
    read = Settings.from_environ({})
    for field in dataclasses.fields(Settings):
        assert getattr(read, field.name) == field.default, field.name


def test_invalid_configuration_stops_serve_with_the_reason(
    opt_ml: Path, start_serve: StartServe
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SAGEMAKER_TRITON_INFERENCE_TYPE="predict")
    assert server.wait_exit(30) == 1
    assert "SAGEMAKER_TRITON_INFERENCE_TYPE='predict' is not one of" in server.output
    assert "Traceback" not in server.output


@pytest.mark.skipif(os.geteuid() != 0, reason="only under root do nginx's workers drop to nobody")
def test_a_workdir_nginx_workers_cannot_enter_is_refused(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SERVE_WORKDIR=str(closed / "work"))
    assert server.wait_exit(30) == 1
    assert f"SERVE_WORKDIR={closed / 'work'}: nginx's workers run as nobody" in server.output
    assert "or choose a folder under /tmp" in server.output
    assert "Traceback" not in server.output
    assert not (closed / "work").exists()


# Numbers Python reads happily but the program that gets them (nginx, Triton) does not.
OUT_OF_RANGE = {
    "SERVE_MAX_BODY_BYTES": "99999999999999999999",
    "SAGEMAKER_TRITON_THREAD_COUNT": "4294967296",
    "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE": "99999999999999999999",
    "SERVE_SHUTDOWN_TIMEOUT": "1e400",
    "SERVE_STARTUP_TIMEOUT": "inf",
}


@pytest.mark.parametrize("variable", OUT_OF_RANGE)
def test_a_number_its_consumer_cannot_take_stops_serve_before_anything_starts(
    opt_ml: Path, start_serve: StartServe, variable: str
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, **{variable: OUT_OF_RANGE[variable]})
    assert server.wait_exit(30) == 1
    assert f"{variable}={OUT_OF_RANGE[variable]!r}" in server.output
    assert "Traceback" not in server.output
    assert "starting nginx" not in server.output


# Flags that would open what serve keeps closed, or take what serve owns, each with
# the flag the refusal must name (abbreviated and space-separated forms too: Triton's
# getopt_long takes both).
REFUSED_ADDITIONAL_ARGS = [
    ("--http-address=0.0.0.0", "--http-address"),
    ("--http-addr=0.0.0.0", "--http-address"),
    ("--allow-sagemaker=true --sagemaker-port={port}", "--allow-sagemaker"),
    ("--grpc-address 0.0.0.0", "--grpc-address"),
    ("--allow-vertex-ai=true --vertex-ai-port={port}", "--allow-vertex-ai"),
    ("--metrics-address=0.0.0.0", "--metrics-address"),
    ("--reuse-http-port=true", "--reuse-http-port"),
    ("--http-port={port}", "--http-port"),
    ("--model-repository=/tmp", "--model-repository"),
    ("--model-store=/tmp", "--model-store"),
    ("--model-control-mode=poll", "--model-control-mode"),
    ("--load-model=other", "--load-model"),
    # Flags that would undo what serve prepared or relies on (issue 24).
    ("--model-config-name=h100", "--model-config-name"),
    ("--model-config h100", "--model-config-name"),
    ("--repoagent-directory=/tmp", "--repoagent-directory"),
    ("--cache-directory=/tmp", "--cache-directory"),
    ("--http-header-forward-pattern=.*", "--http-header-forward-pattern"),
    ("--http-restricted-api=model-repository,key=value", "--http-restricted-api"),
    ("--exit-timeout-secs=600", "--exit-timeout-secs"),
]


@pytest.mark.parametrize(("args", "flag"), REFUSED_ADDITIONAL_ARGS)
def test_additional_args_cannot_open_what_serve_keeps_closed(
    opt_ml: Path, start_serve: StartServe, args: str, flag: str
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SAGEMAKER_TRITON_ADDITIONAL_ARGS=args.format(port=free_port()))
    assert server.wait_exit(30) == 1
    message = server.output.split("SAGEMAKER_TRITON_ADDITIONAL_ARGS", 1)[1].splitlines()[0]
    assert flag in message and "instead" in message, message
    assert "starting" not in server.output


def test_reserved_flags_are_tritons_and_refuse_no_other_flag() -> None:
    """Triton's own --help: every flag of the table exists, and no other flag begins the
    name of one serve refuses."""
    flags = set(help_flags(locate_triton(None).binary))
    assert "--model-repository" in flags
    assert set(FLAGS) <= flags
    assert {rule.decision for rule in FLAGS.values()} == set(Decision)
    assert all(rule.reason for rule in FLAGS.values())
    for flag in flags - set(RESERVED_FLAGS):
        assert not any(reserved.startswith(flag) for reserved in RESERVED_FLAGS), flag
        assert check_additional_args([f"{flag}=x"]) == (f"{flag}=x",)


def test_additional_args_merge_with_the_settings_serve_renders(
    opt_ml: Path, start_serve: StartServe
) -> None:
    """As NVIDIA's image takes them, but once: serve renders the flag, fitted, from the value.

    Passed on after serve's own, the Python backend's shm size undid the fit to /dev/shm
    (Triton takes the last), and --model-namespacing appeared twice.
    """
    write_add_model(opt_ml / "model")
    server = start_serve(
        opt_ml,
        SAGEMAKER_TRITON_ADDITIONAL_ARGS="--backend-config=python,shm-default-byte-size=4194304 "
        "--backend-config python,shm-growth-byte-size=2097152 --model-namespacing false "
        "--backend-config=python,stub-timeout-seconds=45",
    ).wait_ready()
    argv = triton_argv(server)
    assert [a for a in argv if "shm-default-byte-size" in a] == [
        "--backend-config=python,shm-default-byte-size=4194304"
    ]
    assert [a for a in argv if "shm-growth-byte-size" in a] == [
        "--backend-config=python,shm-growth-byte-size=2097152"
    ]
    assert [a for a in argv if a.startswith("--model-namespacing")] == ["--model-namespacing=false"]
    assert "--backend-config=python,stub-timeout-seconds=45" in argv


@pytest.mark.parametrize(
    ("variable", "value", "args"),
    [
        (
            "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE",
            "8388608",
            "--backend-config=python,shm-default-byte-size=4194304",
        ),
        ("SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING", "true", "--model-namespacing=false"),
    ],
)
def test_a_merged_flag_that_contradicts_its_setting_is_refused(
    variable: str, value: str, args: str
) -> None:
    from serve.triton.command import merge_additional_args

    settings = Settings.from_environ({variable: value, "SAGEMAKER_TRITON_ADDITIONAL_ARGS": args})
    with pytest.raises(ConfigError, match=f"{variable}.*keep one of them"):
        merge_additional_args(settings)
    same = Settings.from_environ(
        {variable: args.rsplit("=", 1)[1], "SAGEMAKER_TRITON_ADDITIONAL_ARGS": args}
    )
    assert merge_additional_args(same).additional_args == ()


@pytest.mark.parametrize(
    "args",
    [
        "--backend-config=python,shm-region-prefix-name=mine_",
        "--backend-config python,shm-region-prefix-name=mine_",
        "--backend-c=python,shm-region-prefix-name=mine_",
    ],
)
def test_a_python_shm_prefix_in_additional_args_is_refused(args: str) -> None:
    # serve's own prefix is how it finds the regions a crashed Triton leaves.
    from serve.triton.command import merge_additional_args

    settings = Settings.from_environ({"SAGEMAKER_TRITON_ADDITIONAL_ARGS": args})
    with pytest.raises(ConfigError, match="shared-memory regions, which serve names itself"):
        merge_additional_args(settings)


def test_models_import_from_serve_model_python(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    """The image's case: serve runs from its own venv, models from another Python."""
    python = tmp_path / "models-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(python)], check=True)
    (site,) = (python / "lib").glob("python3.*/site-packages")
    # numpy (which the stub imports) from serve's environment, one module of its own.
    (site / "serve_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "only_in_model_python.py").write_text("")
    write_add_model(opt_ml / "model", model_py="import only_in_model_python\n" + ADD_MODEL_PY)

    server = start_serve(opt_ml, SERVE_MODEL_PYTHON=str(python / "bin" / "python")).wait_ready()
    (pid,) = server.child_pids("tritonserver")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    path = next(item for item in environ if item.startswith(b"PATH=")).decode()
    assert path.startswith(f"PATH={python / 'bin'}:")


def test_a_model_python_that_does_not_run_is_refused(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, SERVE_MODEL_PYTHON=str(tmp_path / "no-python"))
    assert server.wait_exit(30) == 1
    assert f"SERVE_MODEL_PYTHON={tmp_path / 'no-python'} is not an executable Python" in (
        server.output
    )
    assert "Traceback" not in server.output
