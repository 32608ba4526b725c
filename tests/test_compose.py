"""docker-compose.yml, deploy/Dockerfile and deploy/kuberay-cluster.yaml, checked without Docker or Kubernetes.

Docker cannot run here, so these tests check what can be checked: the files parse, every service of the project
image runs a real entrypoint (``ray start`` with options Ray knows, ``python -m pipeline…`` modules that exist,
``python jobs/…`` files) with a real config, every image is pinned, every published port binds 127.0.0.1, Ray runs
with token authentication, and the image's pinned versions satisfy pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.config import load_config
from pipeline.store import DataRoot

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT_IMAGE = f"facerank:{PYPROJECT['project']['version']}"
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()
REQUIREMENTS = [
    Requirement(line)
    for line in (REPO / "deploy" / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable substitution: ``${X:-default}``, ``${X:?error}`` (required), ``$$`` → ``$``."""
    env = env or {}

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":?":
            return f"<{name}>"  # required: compose refuses to start without it
        return arg or ""

    return _VAR.sub(sub, text).replace("$$", "$")


def command_argv(service: dict) -> list[str]:
    cmd = service.get("command")
    if isinstance(cmd, list):
        return [interpolate(c) for c in cmd]
    return shlex.split(interpolate(cmd or ""))


def ray_start_options() -> set[str]:
    from ray.scripts.scripts import start

    return {opt for param in start.params for opt in param.opts}


def check_ray_start(argv: list[str]) -> None:
    assert argv[:2] == ["ray", "start"], argv
    known = ray_start_options()
    for arg in argv[2:]:
        assert arg.startswith("--"), f"stray argument {arg!r} in {argv}"
        assert arg.split("=", 1)[0] in known, f"ray start has no option {arg}"
    assert "--block" in argv, "a container's ray start must --block or the container exits"


def project_services() -> dict[str, dict]:
    return {name: s for name, s in SERVICES.items() if s.get("image") == PROJECT_IMAGE}


def test_compose_has_the_cluster_services():
    assert {"ray-head", "ray-worker", "ray-worker-gpu", "selenium", "minio", "minio-init", "scheduler"} <= set(SERVICES)
    assert set(project_services()) == {"ray-head", "ray-worker", "ray-worker-gpu", "scheduler"}
    for name in project_services():
        build = SERVICES[name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file()


def test_every_project_service_runs_a_real_entrypoint_and_config():
    for name, service in project_services().items():
        argv = command_argv(service)
        assert argv, f"{name} has no command"
        if argv[0] == "ray":
            check_ray_start(argv)
            continue
        assert argv[0] == "python", f"{name}: {argv}"
        if argv[1] == "-m":
            assert argv[2].startswith("pipeline"), argv
            assert importlib.util.find_spec(argv[2]) is not None, f"{name}: no module {argv[2]}"
            rest = argv[3:]
        else:
            assert (REPO / argv[1]).is_file() and argv[1].startswith("jobs/"), f"{name}: no job file {argv[1]}"
            rest = argv[2:]
        config = rest[rest.index("--config") + 1]
        assert (REPO / config).is_file(), f"{name}: no config {config}"
        load_config(REPO / config)  # valid with the defaults of its ${VAR:-…}


def test_ray_head_and_workers():
    head = command_argv(SERVICES["ray-head"])
    assert "--head" in head and "--port=6379" in head and "--dashboard-port=8265" in head
    for name in ("ray-worker", "ray-worker-gpu"):
        argv = command_argv(SERVICES[name])
        assert "--address=ray-head:6379" in argv
        # scalable with --scale: no fixed container name, no published host ports
        assert "container_name" not in SERVICES[name] and "ports" not in SERVICES[name]
    gpu = SERVICES["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "--num-gpus=1" in command_argv(gpu)
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_every_image_is_pinned():
    for name, service in SERVICES.items():
        image = service["image"]
        repo, sep, tag = image.rpartition(":")
        assert sep and repo and "/" not in tag, f"{name}: untagged image {image}"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: unpinned image {image}"
    assert SERVICES["selenium"]["image"].startswith("selenium/standalone-chromium:")


def _published(port: str | dict) -> tuple[str, str]:
    if isinstance(port, dict):
        return port.get("host_ip", ""), str(port.get("published", ""))
    parts = str(port).split(":")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0])


def test_every_published_port_binds_loopback():
    published = []
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host_ip, host_port = _published(port)
            assert host_ip == "127.0.0.1", f"{name}: port {port} is published on every interface"
            published.append(host_port)
    assert {"8265", "6379", "4444", "9000"} <= set(published)
    assert "--dashboard-host=127.0.0.1" in (REPO / "pipeline" / "testing" / "head.py").read_text()


def test_ray_services_require_token_auth_and_share_one_data_root():
    for name, service in project_services().items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), f"{name}: the token must be required"
        assert interpolate(env["SELENIUM_REMOTE_URL"]) == "http://selenium:4444/wd/hub"
    env = SERVICES["ray-head"]["environment"]
    data_root = interpolate(env["FACERANK_DATA_ROOT"])
    cfg = load_config(REPO / "configs" / "cluster.yaml", overrides={})
    assert cfg.data_root == data_root, "configs/cluster.yaml and docker-compose.yml disagree on the data root"
    root = DataRoot(cfg.data_root)
    assert type(root.fs).__name__ == "S3FileSystem" and root.base == "facerank/data"
    init = " ".join(command_argv(SERVICES["minio-init"]))
    assert "mc mb --ignore-existing local/facerank" in init


def test_scheduler_service_talks_to_the_head(monkeypatch):
    sched = SERVICES["scheduler"]
    assert command_argv(sched)[:4] == ["python", "-m", "pipeline", "scheduler"]
    monkeypatch.setenv("RAY_DASHBOARD_URL", sched["environment"]["RAY_DASHBOARD_URL"])
    assert load_config(REPO / "configs" / "cluster.yaml").score.ray_address == "http://ray-head:8265"


def test_cluster_config_reads_gpu_and_security_switches_from_env(monkeypatch):
    cfg = load_config(REPO / "configs" / "cluster.yaml")
    assert cfg.scrape.http.allow_private_addresses is False  # safe by default
    assert cfg.train.use_gpu is False and cfg.score.num_gpus_per_actor == 0
    monkeypatch.setenv("FACERANK_USE_GPU", "true")
    monkeypatch.setenv("FACERANK_SCORE_GPUS", "0.5")
    monkeypatch.setenv("FACERANK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("FACERANK_DATA_ROOT", "s3://bucket/prefix?region=eu-west-1")
    cfg = load_config(REPO / "configs" / "cluster.yaml")
    assert cfg.train.use_gpu is True and cfg.score.num_gpus_per_actor == 0.5
    assert cfg.scrape.http.allow_private_addresses is True
    assert cfg.data_root == "s3://bucket/prefix?region=eu-west-1"


# ---------------------------------------------------------------- the image
def test_dockerfile_base_and_install_are_pinned():
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, flags=re.M)
    assert froms == ["python:3.11-slim-bookworm"]
    for line in re.findall(r"pip install[^\n\\]*", DOCKERFILE):
        assert "-r deploy/requirements.txt" in line, f"unpinned install: {line}"
    for src in re.findall(r"^COPY\s+(\S+)\s", DOCKERFILE, flags=re.M):
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    cmd = re.search(r"^CMD\s+(\[.*\])", DOCKERFILE, flags=re.M)
    check_ray_start(yaml.safe_load(cmd.group(1)))


def test_image_requirements_pin_every_dependency_within_pyproject():
    pins = {}
    for req in REQUIREMENTS:
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"not pinned: {req}"
        pins[canonicalize_name(req.name)] = spec[0].version
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["ray"] == "2.60.0"
    assert next(r for r in REQUIREMENTS if r.name == "ray").extras == {"data", "train", "default"}
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} (pyproject) is not pinned in deploy/requirements.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} violates pyproject's {req.specifier}"


def test_kuberay_cluster_matches_the_image_and_requires_auth():
    doc = yaml.safe_load((REPO / "deploy" / "kuberay-cluster.yaml").read_text())
    assert doc["kind"] == "RayCluster"
    ray_pin = next(str(r.specifier).lstrip("=") for r in REQUIREMENTS if r.name == "ray")
    assert doc["spec"]["rayVersion"] == ray_pin
    spec = doc["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for c in group["template"]["spec"]["containers"]:
            assert c["image"] == PROJECT_IMAGE
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("name", ["ray-head", "ray-worker", "ray-worker-gpu"])
def test_ray_containers_have_room_for_the_object_store(name):
    assert SERVICES[name]["shm_size"] == "2gb"


# ---------------------------------------------------------------- docs/cluster.md
DOC = (REPO / "docs" / "cluster.md").read_text()


def doc_block(name: str) -> str:
    """The fenced block after ``<!-- test: name -->`` in docs/cluster.md."""
    after = DOC.split(f"<!-- test: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def write_scores(root: DataRoot) -> None:
    """Two days of scores for two models, as the score stage writes them."""
    import datetime as dt

    from pipeline.store import now

    for day, n in ((dt.date(2026, 1, 2), 4), (dt.date(2026, 1, 3), 3)):
        rows = [
            {"image_sha256": f"{day.day}{i:063x}", "model_id": f"m{i % 2}", "score": i / 10, "status": "ok",
             "percentile": i / 10, "run_id": "score-1", "scored_at": now()}
            for i in range(n)
        ]  # fmt: skip
        root.write_part(root.scores_partition(day), rows)
    root.fs.create_dir(root.path("scores", "dt=2026-01-03", "_tmp"), recursive=True)  # as a killed job leaves it
    root.write_bytes_atomic(root.path("scores", "dt=2026-01-03", "_tmp", "half.parquet"), b"PAR1 not parquet")


def run_block(name: str) -> dict:
    namespace: dict = {}
    exec(compile(doc_block(name), f"docs/cluster.md:{name}", "exec"), namespace)
    return namespace


def test_docs_read_local_snippet(tmp_path, monkeypatch):
    write_scores(DataRoot(str(tmp_path / "data" / "demo")))
    monkeypatch.chdir(tmp_path)
    ns = run_block("read-local")
    assert len(ns["scores"]) == 7 and set(ns["scores"]["dt"].astype(str)) == {"2026-01-02", "2026-01-03"}
    assert ns["best"]["score"].tolist() == sorted(ns["best"]["score"], reverse=True)
    per_model = dict(ns["per_model"].select("model_id", "images").iter_rows())
    assert per_model == {"m0": 4, "m1": 3}


def test_docs_read_s3_snippet(s3_server, monkeypatch):
    uri = s3_server("facerank", "data")
    write_scores(DataRoot(uri))
    monkeypatch.setenv("S3_ENDPOINT", s3_server.endpoint.removeprefix("http://"))
    ns = run_block("read-s3")
    assert len(ns["scores"]) == 7
    assert ns["latest"].shape[0] == 3 and set(ns["latest"]["dt"].cast(str)) == {"2026-01-03"}


def test_docs_read_duckdb_snippet(tmp_path, monkeypatch):
    pytest.importorskip("duckdb")
    write_scores(DataRoot(str(tmp_path / "data" / "demo")))
    monkeypatch.chdir(tmp_path)
    assert sorted(run_block("read-duckdb")["top"]["images"].tolist()) == [3, 4]


def _ray_command(argv: list[str]):
    from ray.scripts.scripts import cli

    cmd, i = cli, 1
    while hasattr(cmd, "commands") and i < len(argv) and not argv[i].startswith("-"):
        assert argv[i] in cmd.commands, f"no such ray command: {' '.join(argv[: i + 1])}"
        cmd, i = cmd.commands[argv[i]], i + 1
    return cmd, argv[i:]


def test_docs_commands_exist():
    """Every ``ray …`` line in docs/cluster.md names a real ray command with options it has; files exist."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC, flags=re.S)
    lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    checked = 0
    for line in lines:
        argv = shlex.split(line.split(" #")[0])
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            argv = argv[1:]  # VAR=value prefixes
        if argv[:1] == ["ray"]:
            cmd, rest = _ray_command(argv)
            opts = {o for p in cmd.params for o in p.opts}
            for arg in rest:
                if arg == "--":
                    break
                if arg.startswith("-"):
                    assert arg.split("=", 1)[0] in opts, f"{line}: {arg} is not an option"
            checked += 1
        for word in argv:
            if word.startswith(("jobs/", "configs/", "deploy/")):
                assert (REPO / word).exists(), f"{line}: no {word}"
    assert checked >= 6
    for service in re.findall(r"--scale ([a-z-]+)=", DOC):
        assert service in SERVICES
    assert "gpu" in {p for s in SERVICES.values() for p in s.get("profiles", [])}


def test_image_refuses_to_start_ray_without_token_auth(tmp_path):
    """deploy/entrypoint.sh: `ray start` needs RAY_AUTH_MODE=token and a token; other commands run as given."""
    import subprocess

    script = str(REPO / "deploy" / "entrypoint.sh")
    assert re.search(r"^ENV[^#]*RAY_AUTH_MODE=token", DOCKERFILE, flags=re.M | re.S)
    assert "ray_bootstrap_config.yaml" in DOCKERFILE  # no cloud-metadata probe from the dashboard
    assert re.search(r'^ENTRYPOINT \[.*"/opt/facerank/deploy/entrypoint.sh"\]', DOCKERFILE, flags=re.M)
    base = {"PATH": "/usr/bin:/bin"}

    def run(env, *argv):
        return subprocess.run([script, *argv], env={**base, **env}, capture_output=True, text=True, timeout=30)

    no_token = run({"RAY_AUTH_MODE": "token"}, "ray", "start", "--head", "--block")
    assert no_token.returncode == 2 and "no Ray token" in no_token.stderr
    auth_off = run({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t" * 32}, "ray", "start", "--head")
    assert auth_off.returncode == 2 and "must be token" in auth_off.stderr
    empty_file = tmp_path / "token"
    empty_file.write_text("")
    assert run({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(empty_file)}, "ray", "start").returncode == 2
    # With a token, the command itself runs (here a stand-in for ray: `ray` is not on this PATH, so use echo).
    ok = run({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 32}, "echo", "started")
    assert ok.returncode == 0 and ok.stdout.strip() == "started"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ray").write_text('#!/bin/sh\necho ray-ran "$@"\n')
    (fake_bin / "ray").chmod(0o755)
    started = subprocess.run(
        [script, "ray", "start", "--head"],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 32},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 0 and started.stdout.strip() == "ray-ran start --head"


def test_every_ray_container_gets_the_one_optout_key_from_a_secret():
    """Compose refuses to start without FACERANK_OPTOUT_KEY; every KubeRay container reads it from one Secret."""
    for name, service in project_services().items():
        assert service["environment"]["FACERANK_OPTOUT_KEY"].startswith("${FACERANK_OPTOUT_KEY:?"), name
    for manifest in ("kuberay-cluster.yaml", "raycronjob.yaml"):
        doc = yaml.safe_load((REPO / "deploy" / manifest).read_text())
        spec = doc["spec"]["jobTemplate"]["rayClusterSpec"] if doc["kind"] == "RayCronJob" else doc["spec"]
        pods = [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]
        containers = [c for pod in pods for c in pod["containers"]]
        assert len(containers) >= 2
        for c in containers:
            ref = {e["name"]: e for e in c["env"]}["FACERANK_OPTOUT_KEY"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "facerank-optout-key", "key": "key"}, f"{manifest}: {c['name']}"


def _manifest_pods() -> list[tuple[str, dict]]:
    """(manifest, pod spec) of every pod the two KubeRay manifests make (RayCronJob: also its submitter)."""
    pods = []
    for manifest in ("kuberay-cluster.yaml", "raycronjob.yaml"):
        doc = yaml.safe_load((REPO / "deploy" / manifest).read_text())
        spec = doc["spec"]["jobTemplate"]["rayClusterSpec"] if doc["kind"] == "RayCronJob" else doc["spec"]
        pods += [(manifest, g["template"]["spec"]) for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]
        if doc["kind"] == "RayCronJob":
            pods.append((manifest, doc["spec"]["jobTemplate"]["submitterPodTemplate"]["spec"]))
    return pods


def test_deploy_runs_as_non_root_without_privilege_escalation_on_a_read_only_root():
    """Every pod runs as uid 1000 (numeric in the image, so runAsNonRoot can check it), every container drops all
    capabilities on a read-only root with /tmp and /dev/shm as the only writable places; compose the same."""
    assert re.search(r"^USER 1000:1000$", DOCKERFILE, flags=re.M) and "--uid 1000" in DOCKERFILE
    pods = _manifest_pods()
    assert len(pods) == 6
    for manifest, pod in pods:
        sec = pod["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] == 1000, manifest
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            cs = c["securityContext"]
            assert cs["allowPrivilegeEscalation"] is False and cs["readOnlyRootFilesystem"] is True, manifest
            assert cs["capabilities"]["drop"] == ["ALL"], manifest
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert set(mounts) == {"/tmp", "/dev/shm"} and all("emptyDir" in volumes[n] for n in mounts.values())
    for name, service in project_services().items():
        assert service["user"] == "1000:1000" and service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"], name
        assert "/tmp" in service["tmpfs"], name


def test_ray_containers_reach_s3_as_a_bucket_scoped_user_not_minio_root():
    """MinIO's root keys stay in minio and minio-init; the Ray containers get a user minio-init limits to the
    facerank bucket; the KubeRay submitter gets the Ray token only."""
    for name, service in project_services().items():
        env = service["environment"]
        assert "MINIO_ROOT" not in env["AWS_ACCESS_KEY_ID"] + env["AWS_SECRET_ACCESS_KEY"], name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${FACERANK_S3_SECRET_KEY:?"), name
        assert not any(k.startswith("MINIO_ROOT") for k in env), name
    roots = {n for n, s in SERVICES.items() if any("MINIO_ROOT" in k for k in (s.get("environment") or {}))}
    assert roots == {"minio", "minio-init"}
    init = SERVICES["minio-init"]
    policy = json.loads(init["environment"]["BUCKET_POLICY"])
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::facerank", "arn:aws:s3:::facerank/*"}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert "s3:*" not in actions and not any(a.startswith("admin:") for a in actions)
    script = " ".join(command_argv(init))
    for step in ("mc admin policy create local facerank-bucket", 'mc admin user add local "$FACERANK_S3_ACCESS_KEY"',
                 "mc admin policy attach local facerank-bucket --user"):  # fmt: skip
        assert step in script, step
    cron = yaml.safe_load((REPO / "deploy" / "raycronjob.yaml").read_text())
    submitter = cron["spec"]["jobTemplate"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert {e["name"] for e in submitter["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} and "envFrom" not in submitter


def test_raycronjob_runs_code_that_is_in_the_image():
    """The nightly job's entrypoint and config are files the image holds (under /opt/facerank, its PYTHONPATH);
    no working_dir that the image lacks (Ray refuses a working_dir that is not an existing directory)."""
    cron = yaml.safe_load((REPO / "deploy" / "raycronjob.yaml").read_text())
    job = cron["spec"]["jobTemplate"]
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert "working_dir" not in runtime_env and runtime_env["env_vars"]["FACERANK_SCORE_GPUS"] == "0"
    workdir = re.search(r"^WORKDIR (\S+)", DOCKERFILE, flags=re.M).group(1)
    assert workdir == "/opt/facerank" and "PYTHONPATH=/opt/facerank" in DOCKERFILE
    copied = re.findall(r"^COPY\s+(\S+)\s+(\S+)", DOCKERFILE, flags=re.M)
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "python" and argv[2] == "--config"
    for path in (argv[1], argv[3]):
        rel = path.removeprefix(workdir + "/")
        assert path.startswith(workdir + "/") and (REPO / rel).is_file(), path
        assert any(rel.startswith(src.rstrip("/") + "/") for src, _ in copied), f"{rel} is not copied into the image"
    load_config(REPO / argv[3].removeprefix(workdir + "/"))
