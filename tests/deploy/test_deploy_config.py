"""Deployment files, validated offline: docker compose, Dockerfiles, Kubernetes manifests.

The tools come from scripts/install.sh --dev (Debian's docker-compose; hadolint, kubectl
and kubernetes-validate from PyPI); a test skips only where its tool is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from plotarmour.roles import ROLES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("services/*/Dockerfile"))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bash scripts/install.sh --dev installs it)")
    return path


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_files_are_valid(files):
    import yaml

    args = [a for f in files for a in ("-f", f)]
    rendered = yaml.safe_load(run(tool("docker-compose"), *args, "config"))
    services = rendered["services"]
    assert set(services) == {"bdh", "gpt2", "gateway"}
    assert services["gateway"]["depends_on"] == {
        "bdh": {"condition": "service_healthy"}, "gpt2": {"condition": "service_healthy"}}
    for name in ("bdh", "gpt2"):
        assert "plotarmour.modelserver.probe" in services[name]["healthcheck"]["test"]
        gpu = services[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        assert bool(gpu) == ("docker-compose.gpu.yml" in files)


# -- compose without docker-compose: the files as written, ${VAR:-default} at its default ----

def compose_file(name: str, env: dict[str, str] | None = None) -> dict:
    """A compose file parsed with yaml, ${VAR:-default} and ${VAR} interpolated from `env`
    (unset by default, so defaults apply whatever the test runner's environment holds)."""
    import yaml

    env = env or {}

    def value(m: re.Match) -> str:
        var, default = m.group(1), m.group(3)
        return env.get(var) or (default or "")  # ":-": an empty variable takes the default too

    text = re.sub(r"\$\{(\w+)(:-([^}]*))?\}", value, (ROOT / name).read_text())
    return yaml.safe_load(text)


def published(ports: list) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port, in the short syntax
    ([HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO], docker-compose 1 renders that) or the long
    one (docker compose 2 renders that). A host address of "" means every interface."""
    out = []
    for port in ports:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/", 1)[0].rsplit(":", 2)
            out.append(tuple([""] * (3 - len(parts)) + parts))
    return out


def test_compose_publishes_only_on_loopback_by_default():
    services = compose_file("docker-compose.yml")["services"]
    assert published(services["gateway"]["ports"]) == [("127.0.0.1", "8000", "8000")]
    for name, service in services.items():  # model servers: not published, or on loopback only
        assert all(ip == "127.0.0.1" for ip, _, _ in published(service.get("ports", []))), name
    override = compose_file("docker-compose.gpu.yml")["services"]
    assert all(not s.get("ports") for s in override.values())  # the GPU file publishes nothing more
    # and PLOTARMOUR_PUBLISH_HOST opens it up when asked to
    opened = compose_file("docker-compose.yml", {"PLOTARMOUR_PUBLISH_HOST": "0.0.0.0", "PLOTARMOUR_PORT": "9000"})
    assert published(opened["services"]["gateway"]["ports"]) == [("0.0.0.0", "9000", "8000")]


def test_gpu_override_builds_images_of_its_own():
    base = compose_file("docker-compose.yml")["services"]
    gpu = compose_file("docker-compose.gpu.yml")["services"]
    built = [name for name, s in base.items() if "build" in s]
    assert built == ["bdh", "gpt2", "gateway"]
    for name in built:
        cpu_image, gpu_image = base[name]["image"], gpu.get(name, {}).get("image", base[name]["image"])
        assert ":" in cpu_image and ":" in gpu_image, "tag both variants explicitly"
        assert gpu_image != cpu_image, f"{name}: building the GPU variant would overwrite {cpu_image}"
    for name in ("bdh", "gpt2"):  # the CUDA torch comes through the Dockerfiles' TORCH_INDEX argument
        assert "/cu" in gpu[name]["build"]["args"]["TORCH_INDEX"]
        assert "TORCH_INDEX" not in base[name]["build"].get("args", {})
        dockerfile = (ROOT / base[name]["build"]["dockerfile"]).read_text()
        assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile


def test_compose_renders_loopback_port_and_distinct_gpu_images():
    import yaml

    compose = tool("docker-compose")
    # the defaults, whatever the runner's environment sets
    env = {k: v for k, v in os.environ.items() if k not in ("PLOTARMOUR_PUBLISH_HOST", "PLOTARMOUR_PORT")}
    cpu = yaml.safe_load(run(compose, "-f", "docker-compose.yml", "config", env=env))["services"]
    gpu = yaml.safe_load(run(compose, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config",
                             env=env))["services"]
    for services in (cpu, gpu):
        assert published(services["gateway"]["ports"]) == [("127.0.0.1", "8000", "8000")]
        for name, service in services.items():
            assert all(ip == "127.0.0.1" for ip, _, _ in published(service.get("ports", []))), name
    for name in ("bdh", "gpt2", "gateway"):
        assert cpu[name]["image"] != gpu[name]["image"], name
    for name in ("bdh", "gpt2"):
        assert gpu[name]["build"]["args"]["TORCH_INDEX"].endswith("/cu124")


def test_one_dockerfile_serves_every_role():
    assert [p.parent.name for p in DOCKERFILES] == ["gateway", "modelserver"]
    base = compose_file("docker-compose.yml")["services"]
    gpu = compose_file("docker-compose.gpu.yml")["services"]
    for name in ROLES:
        for services in (base, gpu):
            assert services[name]["build"]["dockerfile"] == "services/modelserver/Dockerfile"
            assert services[name]["build"]["args"]["ROLE"] == name


def test_compose_and_kubernetes_follow_the_roles_table():
    """The ports written in the deployment files are the roles' (plotarmour/roles.py), which
    the images listen on by default."""
    import yaml

    compose = compose_file("docker-compose.yml")["services"]
    gateway_env = compose["gateway"]["environment"]
    k8s = {}
    for path in sorted((ROOT / "deploy/k8s/base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in ("Deployment", "Service"):
                k8s[doc["kind"], doc["metadata"]["name"]] = doc
    k8s_gateway_env = {e["name"]: e.get("value") for e in
                       k8s["Deployment", "gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name, role in ROLES.items():
        assert compose[name]["expose"] == [str(role.port), str(role.metrics_port)]
        assert gateway_env[f"PLOTARMOUR_GATEWAY_{role.env_prefix}ADDRESS"] == f"{name}:{role.port}"
        assert all(key.startswith(role.env_prefix) for key in compose[name]["environment"])
        container = k8s["Deployment", name]["spec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
            "grpc": role.port, "metrics": role.metrics_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == role.port
        assert [p["port"] for p in k8s["Service", name]["spec"]["ports"]] == [role.port, role.metrics_port]
        assert k8s_gateway_env[f"PLOTARMOUR_GATEWAY_{role.env_prefix}ADDRESS"].endswith(f":{role.port}")


def test_dockerfiles_pass_hadolint():
    run(tool("hadolint"), "--config", ".hadolint.yaml", *map(str, DOCKERFILES))


def test_model_server_image_pins_torch_as_pyproject_does():
    # torch comes first from TORCH_INDEX (CPU or CUDA wheels); a looser pin than the package's
    # would let `pip install .[models]` replace it with PyPI's default (CUDA) wheel.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {re.sub(r"\s", "", d) for d in project["dependencies"] + project["optional-dependencies"]["models"]
              if re.match(r"torch\b", d)}
    pinned = set(re.findall(r'pip install --index-url \$\{TORCH_INDEX\} "(torch[^"]*)"',
                            (ROOT / "services/modelserver/Dockerfile").read_text()))
    assert len(wanted) == 1 and pinned == wanted


def test_gateway_image_installs_no_torch():
    text = (ROOT / "services/gateway/Dockerfile").read_text()
    assert ".[gateway]" in text and "torch" not in text.replace("No torch", "")


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_kubernetes_manifests_render_and_validate(tmp_path, overlay):
    import yaml

    rendered = run(tool("kubectl"), "kustomize", f"deploy/k8s/{overlay}")
    path = tmp_path / "manifests.yaml"
    path.write_text(rendered)
    run(tool("kubernetes-validate"), "--strict", str(path))
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name in ("bdh", "gpt2", "gateway"):
        assert ("Deployment", name) in kinds and ("Service", name) in kinds
    assert ("HorizontalPodAutoscaler", "gateway") in kinds
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in ("bdh", "gpt2"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert "grpc" in container["readinessProbe"] and "grpc" in container["livenessProbe"]
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (overlay == "overlays/gpu")
    # the tags the compose files build: :latest (CPU torch), :gpu from docker-compose.gpu.yml
    compose = compose_file("docker-compose.yml" if overlay == "base" else "docker-compose.gpu.yml")["services"]
    for name in ("bdh", "gpt2", "gateway"):
        assert deployments[name]["spec"]["template"]["spec"]["containers"][0]["image"] == compose[name]["image"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services["bdh"]["spec"]["clusterIP"] == "None"  # headless: the gateway balances per replica
    # Gateway replicas find each other through a headless Service; each names itself by pod IP.
    assert services["gateway-peers"]["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PLOTARMOUR_GATEWAY_PEERS"]["value"].startswith("dns:gateway-peers.")
    assert env["PLOTARMOUR_GATEWAY_ADVERTISE_ADDRESS"]["value"] == "$(POD_IP):8000"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
