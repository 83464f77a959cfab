"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests say what the code does.

No container engine or cluster runs here, so the files are checked against the code they start: every
variable they set is one Attune reads, every command is one `attune` takes, ports and probes meet, the
package the image installs carries every file the service needs, and the API and worker processes started
exactly as the manifests start them (their command, their configuration) serve, work and stop cleanly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from service import keys
from service import standin
from service.cli import PROGRAMS, build_parser
from service.settings import Settings
from tests.conftest import ADMIN_KEY, ROOT, free_port

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def k8s_objects() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def workloads() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")}


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def known_variables() -> set[str]:
    """Every ATTUNE_/MINIMAX_ variable the code reads: the settings' fields and aliases, and the names read
    from the environment directly (the stand-in's, `attune serve`'s process count)."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else f"ATTUNE_{name.upper()}")
    for package in ("service", "workers", "models"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"""["'](ATTUNE_[A-Z_]+)["']""", path.read_text()))
    return names


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        stages[-1].append((op.upper(), rest.strip()))
    return stages


def test_the_kubernetes_manifests_are_complete_and_consistent() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml lists {sorted(listed)}, deploy/k8s holds {sorted(on_disk)}"
    objects = k8s_objects()
    assert all(o.get("apiVersion") and o.get("kind") and o["metadata"].get("name") for o in objects)
    assert {"attune-api", "attune-worker", "redis"} <= set(workloads())
    for name, w in workloads().items():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    services = [o for o in objects if o["kind"] == "Service"]
    for svc in services:
        backing = [w for w in workloads().values()
                   if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert backing, f"Service {svc['metadata']['name']} selects no workload"
        port_names = {p.get("name") for w in backing for c in w["spec"]["template"]["spec"]["containers"]
                      for p in c.get("ports", [])}
        for port in svc["spec"].get("ports", []):
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)
    # A StatefulSet needs the Service its serviceName governs.
    for w in workloads().values():
        if w["kind"] == "StatefulSet":
            assert w["spec"]["serviceName"] in {s["metadata"]["name"] for s in services}


def test_every_variable_the_deploy_files_set_is_one_attune_reads() -> None:
    known = known_variables()
    assert {"ATTUNE_REDIS_URL", "MINIMAX_API_KEY", "ATTUNE_WORKER_NAME", "ATTUNE_STANDIN_PORT"} <= known
    set_by_files: dict[str, set[str]] = {}
    for o in k8s_objects():
        if o["kind"] == "ConfigMap":
            set_by_files.setdefault(o["metadata"]["name"], set()).update(o["data"])
        for w in [o] if o["kind"] in ("Deployment", "StatefulSet") else []:
            for c in w["spec"]["template"]["spec"]["containers"]:
                names = {e["name"] for e in c.get("env", [])}
                set_by_files.setdefault(w["metadata"]["name"], set()).update(names)
    for name, svc in compose()["services"].items():
        set_by_files[f"compose {name}"] = set(svc.get("environment") or {})
    for _, rest in dockerfile_stages()[-1]:
        set_by_files.setdefault("Dockerfile", set()).update(re.findall(r"\b([A-Z][A-Z0-9_]*)=", rest))
    for where, names in set_by_files.items():
        ours = {n for n in names if n.startswith(("ATTUNE_", "MINIMAX_"))}
        assert ours <= known, f"{where} sets {sorted(ours - known)}, which Attune never reads"
    # API and workers of one deployment route a user to the same partition: they read one configuration.
    config = next(o for o in k8s_objects() if o["kind"] == "ConfigMap")
    assert "ATTUNE_PARTITIONS" in config["data"] and config["data"]["ATTUNE_HOST"] == "0.0.0.0"
    for name in ("attune-api", "attune-worker"):
        c = workloads()[name]["spec"]["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in c["envFrom"], name
        assert not any(e["name"] == "ATTUNE_PARTITIONS" for e in c.get("env", [])), name
    shared = compose()["x-attune-env"]
    for name in ("api", "worker"):
        assert compose()["services"][name]["environment"]["ATTUNE_PARTITIONS"] == shared["ATTUNE_PARTITIONS"]
    # The secrets reach the API only.
    assert "ATTUNE_ADMIN_KEY" not in compose()["services"]["worker"]["environment"]
    worker = workloads()["attune-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert not any("secretRef" in source for source in worker["envFrom"])


def check_command(args: list[str]) -> None:
    """`attune <args>` parses: by the stand-in's own parser for `standin`, by attune's for the rest."""
    if args[0] in PROGRAMS:
        assert PROGRAMS[args[0]] == "service.standin"
        standin.build_parser().parse_args(args[1:])
    else:
        build_parser().parse_args(args)


def test_every_command_is_one_attune_takes_and_the_ports_meet() -> None:
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    stages = dockerfile_stages()
    final = dict(stages[-1])
    assert final["ENTRYPOINT"] == '["attune"]'
    check_command(yaml.safe_load(final["CMD"]))
    env = dict(re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S+)", final["ENV"]))
    assert env["ATTUNE_HOST"] == "0.0.0.0", "127.0.0.1 inside a container is unreachable from outside it"
    assert final["EXPOSE"] == env["ATTUNE_PORT"] == str(Settings.model_fields["port"].default)
    assert final["USER"] not in ("root", "0")
    for name, w in workloads().items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            if c["image"] != "attune":
                continue
            assert c["command"] == ["attune"], name
            assert c["args"][0] in subcommands, name
            check_command(c["args"])
    api = workloads()["attune-api"]["spec"]["template"]["spec"]["containers"][0]
    http = next(p for p in api["ports"] if p["name"] == "http")
    assert str(http["containerPort"]) == env["ATTUNE_PORT"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["port"] == "http"
        assert api[probe]["httpGet"]["path"] in ("/healthz", "/readyz")
    services = compose()["services"]
    for name in ("api", "worker", "standin"):
        assert services[name]["image"] == "attune:local"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        check_command(services[name]["command"])
    assert services["api"]["ports"][0].rsplit(":", 1)[1] == services["api"]["environment"]["ATTUNE_PORT"]
    assert services["api"]["environment"]["ATTUNE_REDIS_URL"].startswith("redis://redis:")
    health = " ".join(services["api"]["healthcheck"]["test"])
    assert f":{services['api']['environment']['ATTUNE_PORT']}/healthz" in health
    assert "redis" in services and services["redis"]["image"].startswith("redis:7")
    # A stopping worker gets its grace period (finish the batch), then 2 s to hand it back and its leases
    # (workers/__main__.py), before SIGKILL; the API its preStop pause, then uvicorn's 10 s drain.
    needed = Settings.model_fields["worker_grace_seconds"].default + 2 + 5
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) >= needed
    assert workloads()["attune-worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed
    pause = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
    api_grace = workloads()["attune-api"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert api_grace >= pause + 10 + 5


def test_the_image_copies_what_exists_and_its_ignore_file_lets_it_through() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = []
    for op, rest in dockerfile_stages()[0]:
        if op == "COPY":
            *sources, _ = rest.split()
            copied += sources
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which the repository lacks"
        assert source.rstrip("/") in allowed, f"{source} is copied but Dockerfile.dockerignore leaves it out"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_package_the_image_builds_carries_every_file_the_service_needs(tmp_path: Path) -> None:
    """The image installs a wheel built from what the Dockerfile copies, not this editable checkout: a file
    left out of the package (the dashboard's static files, a module) would be missing only in production."""
    src = tmp_path / "src"
    src.mkdir()
    for op, rest in dockerfile_stages()[0]:
        if op == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, src / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(ROOT / source, src / source)
    wheels = tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir",
                           str(wheels), str(src)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = wheels.glob("attune-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "service", "models", "workers"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    missing = [f for f in tracked if f not in inside]
    assert not missing, f"the image's package lacks {missing}"
    assert "service/static/dashboard.html" in inside
    entry_points = next(n for n in inside if n.endswith("entry_points.txt"))
    assert "attune = service.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def container_env(workload: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the workload's first container: envFrom, then env (fieldRefs as the
    pod's name would resolve them)."""
    configmaps = {o["metadata"]["name"]: o["data"] for o in k8s_objects() if o["kind"] == "ConfigMap"}
    c = workload["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            assert source["secretRef"]["name"] == "attune-secrets"
            env.update(secrets)
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = f"{workload['metadata']['name']}-0"
    return env


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_processes_the_manifests_start_serve_work_and_stop(redis_url: str, redis_sync: redis.Redis,
                                                               tmp_path: Path) -> None:
    """The API and a worker started with the manifests' commands and configuration (Redis, port and data
    directory pointed at this test's): the probe answers, the worker announces itself under its pod name,
    /readyz sees it, an event goes in, and SIGTERM (what Kubernetes sends) stops both cleanly."""
    port = free_port()
    secrets = {"ATTUNE_ADMIN_KEY": ADMIN_KEY}
    here = {"ATTUNE_REDIS_URL": redis_url, "ATTUNE_PORT": str(port), "ATTUNE_DATA_DIR": str(tmp_path / "var")}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ATTUNE_", "MINIMAX_", "PYTEST"))}
    bin_dir = Path(sys.executable).parent
    procs = {}
    for name in ("attune-api", "attune-worker"):
        w = workloads()[name]
        c = w["spec"]["template"]["spec"]["containers"][0]
        env = {**base, **container_env(w, secrets), **here}
        log = (tmp_path / f"{name}.log").open("ab")
        procs[name] = subprocess.Popen([str(bin_dir / c["command"][0]), *c["args"]], env=env, cwd=tmp_path,
                                       stdout=log, stderr=subprocess.STDOUT)
    try:
        api = workloads()["attune-api"]["spec"]["template"]["spec"]["containers"][0]
        probe = f"http://127.0.0.1:{port}{api['readinessProbe']['httpGet']['path']}"
        deadline = time.monotonic() + 60
        while True:
            assert procs["attune-api"].poll() is None, (tmp_path / "attune-api.log").read_text()[-3000:]
            try:
                if httpx.get(probe, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the readiness probe never answered 200"
            time.sleep(0.1)
        while b"attune-worker-0" not in redis_sync.zrange(keys.WORKERS, 0, -1):
            assert procs["attune-worker"].poll() is None, (tmp_path / "attune-worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never announced itself under its pod name"
            time.sleep(0.1)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["workers_alive"] >= 1, ready.text
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        made = httpx.post(f"http://127.0.0.1:{port}/v1/admin/apps/deploy/keys", headers=admin,
                          json={"scopes": ["ingest"]}, timeout=5)
        assert made.status_code == 201, made.text
        sent = httpx.post(f"http://127.0.0.1:{port}/v1/events", timeout=5,
                          headers={"Authorization": f"Bearer {made.json()['key']}"},
                          json={"events": [{"event_id": "d1", "type": "reply_shown", "user_id": "u1",
                                            "reply_id": "r1", "timestamp": int(time.time() * 1000),
                                            "reply": {"chars": 300}}]})
        assert sent.status_code == 202 and sent.json()["accepted"] == 1, sent.text
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM, as Kubernetes
        # expects); the worker returns 0 once it has handed its partitions back.
        assert procs["attune-worker"].wait(30) == 0, (tmp_path / "attune-worker.log").read_text()[-3000:]
        assert procs["attune-api"].wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "attune-api.log").read_text()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_the_compose_stand_in_starts_with_its_options(tmp_path: Path) -> None:
    """`attune standin --host 0.0.0.0 --port N` as compose runs it (its options used to be refused)."""
    command = compose()["services"]["standin"]["command"]
    port = free_port()
    args = [str(port) if prev == "--port" else arg
            for prev, arg in zip(["", *command], command, strict=False)]
    assert args != command
    log = tmp_path / "standin.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "attune"), *args], cwd=tmp_path,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        assert "0.0.0.0" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
