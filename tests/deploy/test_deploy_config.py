"""Deployment files, validated offline: docker compose, Dockerfiles, Kubernetes manifests.

The tools come from scripts/install.sh --dev (Debian's docker-compose; hadolint, kubectl
and kubernetes-validate from PyPI); a test skips only where its tool is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("services/*/Dockerfile"))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bash scripts/install.sh --dev installs it)")
    return path


def run(*argv: str) -> str:
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
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


def test_every_service_has_a_dockerfile():
    assert [p.parent.name for p in DOCKERFILES] == ["bdh", "gateway", "gpt2"]


def test_dockerfiles_pass_hadolint():
    run(tool("hadolint"), "--config", ".hadolint.yaml", *map(str, DOCKERFILES))


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
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services["bdh"]["spec"]["clusterIP"] == "None"  # headless: the gateway balances per replica
