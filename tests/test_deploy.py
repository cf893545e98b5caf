"""deploy/ and the Dockerfile: Kubernetes manifests against the operator's own CRD
schemas, the AWS cluster spec against dask-cloudprovider, the Dockerfile's install
commands in a fresh venv, and deploy/submit.sh end to end (real cluster, moto S3)."""

from __future__ import annotations

import copy
import importlib.resources
import inspect
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import jsonschema
import pytest
import rasterio
import yaml

from tests.conftest import REPO
from tests.procs import moto_server, real_cluster, upload_tree

DEPLOY = REPO / "deploy"
sys.path.insert(0, str(DEPLOY / "aws"))
import launch  # noqa: E402

# --- Kubernetes ------------------------------------------------------------------------

def crd_schema(kind: str) -> dict:
    crds = importlib.resources.files("dask_kubernetes") / "operator/deployment/helm/dask-kubernetes-operator/crds"
    crd = yaml.safe_load((crds / f"{kind.lower()}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def strict(schema: dict) -> dict:
    """Kubernetes prunes unknown fields silently; reject them instead (kubectl
    --validate=strict), so a typo in a field name fails here. `int-or-string` too."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if node.pop("x-kubernetes-int-or-string", False):
                node.pop("type", None)
                node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            if "properties" in node and "additionalProperties" not in node and not node.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


@pytest.mark.parametrize(("name", "kind"), [("daskjob.yaml", "DaskJob"), ("daskcluster.yaml", "DaskCluster")])
def test_k8s_manifests_validate_against_the_operator_crds(name: str, kind: str) -> None:
    documents = manifests(name)
    [resource] = [d for d in documents if d["kind"] == kind]
    assert resource["apiVersion"] == "kubernetes.dask.org/v1"
    body = {k: v for k, v in resource.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.validate(body, crd_schema(kind))


def test_strict_schema_catches_a_typo() -> None:
    [job] = [d for d in manifests("daskjob.yaml") if d["kind"] == "DaskJob"]
    job["spec"]["cluster"]["spec"]["worker"]["replica"] = job["spec"]["cluster"]["spec"]["worker"].pop("replicas")
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate({"spec": job["spec"]}, crd_schema("DaskJob"))


def test_daskjob_runs_the_config_from_its_configmap_with_one_image() -> None:
    documents = manifests("daskjob.yaml")
    [config_map] = [d for d in documents if d["kind"] == "ConfigMap"]
    [job] = [d for d in documents if d["kind"] == "DaskJob"]
    run_config = yaml.safe_load(config_map["data"]["run.yaml"])
    from sn5dask.config import RunConfig

    RunConfig(**run_config)  # the embedded run config is valid
    pod = job["spec"]["job"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["sn5dask", "run", "--config", "/config/run.yaml"]
    assert pod["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    images = set(re.findall(r"image: (\S+)", (DEPLOY / "k8s" / "daskjob.yaml").read_text()))
    images |= set(re.findall(r"image: (\S+)", (DEPLOY / "k8s" / "daskcluster.yaml").read_text()))
    assert len(images) == 1
    worker = job["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]
    assert worker["args"][:2] == ["dask", "worker"] and "--nthreads" in worker["args"]
    service = job["spec"]["cluster"]["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]


# --- AWS -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["daskjob.yaml", "daskcluster.yaml"])
def test_k8s_pods_are_set_up_as_readme_says(name: str) -> None:
    """Work stealing off on the scheduler (README: Clusters and S3), workers' chip copies
    on a scratch volume their ephemeral-storage request covers, every pod under one
    ServiceAccount that carries an IRSA role, and the image deploy/build-image.sh builds."""
    documents = manifests(name)
    [account] = [d for d in documents if d["kind"] == "ServiceAccount"]
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    [resource] = [d for d in documents if d["kind"] in ("DaskJob", "DaskCluster")]
    cluster = resource["spec"]["cluster"]["spec"] if resource["kind"] == "DaskJob" else resource["spec"]
    pods = [cluster["worker"]["spec"], cluster["scheduler"]["spec"]]
    if resource["kind"] == "DaskJob":
        pods.append(resource["spec"]["job"]["spec"])
    assert all(pod["serviceAccountName"] == account["metadata"]["name"] for pod in pods)
    [scheduler] = cluster["scheduler"]["spec"]["containers"]
    assert {"name": "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING", "value": "False"} in scheduler["env"]
    [worker] = cluster["worker"]["spec"]["containers"]
    local = worker["args"][worker["args"].index("--local-directory") + 1]
    [mount] = [m for m in worker["volumeMounts"] if m["mountPath"] == local]
    [volume] = [v for v in cluster["worker"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume
    requested = worker["resources"]["requests"]["ephemeral-storage"]
    assert int(requested.removesuffix("Gi")) >= 8 + 1  # sn5dask.chip-cache-bytes (8 GiB) and logs
    tag = subprocess.run(["sh", str(DEPLOY / "build-image.sh"), "--print-tag"], capture_output=True,
                         text=True, check=True).stdout.strip()
    images = {c["image"] for pod in pods for c in pod["containers"]}
    assert images == {tag}


def test_the_lock_file_pins_every_dependency_within_pyproject() -> None:
    """deploy/requirements.lock (installed by the image, hence by its scheduler and workers,
    and by the submitting client) pins exact versions that satisfy pyproject's ranges."""
    import tomllib

    from packaging.requirements import Requirement

    pins = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["aws"]:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in deploy/requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert "sn5dask" not in pins
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY deploy/requirements.lock ./" in dockerfile and "pip install -r requirements.lock" in dockerfile


def accepted_parameters(cls) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs", "args"}
    return names


@pytest.mark.parametrize("backend", ["fargate", "ec2"])
def test_aws_cluster_spec_uses_real_dask_cloudprovider_parameters(backend: str) -> None:
    import dask_cloudprovider.aws as aws

    args = launch.build_parser().parse_args([
        "run.yaml", "--backend", backend, "--image", "123.dkr.ecr.us-east-1.amazonaws.com/sn5dask:0.1.0",
        "--workers", "16", "--region", "us-east-1", "--task-role-arn", "arn:aws:iam::1:role/t",
        "--iam-instance-profile", "p", "--subnet", "subnet-1", "--security-group", "sg-1", "--spot"])  # fmt: skip
    class_name, spec = launch.cluster_spec(args)
    cls = getattr(aws, class_name)
    if class_name == "FargateCluster":
        allowed = accepted_parameters(aws.ECSCluster)  # FargateCluster passes **kwargs on
        assert spec["worker_cpu"] == 1024 and spec["worker_nthreads"] == 1 and spec["fargate_spot"]
    else:
        allowed = accepted_parameters(cls)
        assert spec["worker_options"] == {"nthreads": 1}
        assert spec["worker_class"] == "sn5dask.runner.vmworkers.NannyPerCPU"  # a process per vCPU
    unknown = set(spec) - allowed
    assert not unknown, f"{class_name} has no parameter(s) {unknown}"
    assert spec["n_workers"] == 16
    json.dumps(spec)  # printable with --print-spec


def start_process(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, cwd="/tmp")


# Registers the launcher's Fargate cluster with dask-cloudprovider against the moto server
# of AWS_ENDPOINT_URL and prints {container name: command} of the task definitions.
FARGATE_TASK_DEFINITIONS = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import boto3, dask_cloudprovider.aws as aws, launch

iam = boto3.client("iam", region_name="us-east-1")
trust = json.dumps({"Version": "2012-10-17", "Statement": []})
roles = [iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
         for name in ("execution", "task")]
args = launch.build_parser().parse_args([
    "run.yaml", "--backend", "fargate", "--workers", "2", "--image", "example/sn5dask:0.1.0",
    "--region", "us-east-1", "--execution-role-arn", roles[0], "--task-role-arn", roles[1]])
class_name, spec = launch.cluster_spec(args)
ecs = boto3.client("ecs", region_name="us-east-1")

async def start():
    cluster = getattr(aws, class_name)(**spec, asynchronous=True)
    try:  # moto never runs the scheduler task: starting waits until cancelled
        await asyncio.wait_for(cluster.__aenter__(), 15)
    except (TimeoutError, asyncio.TimeoutError):
        pass
    commands = {}
    for arn in ecs.list_task_definitions()["taskDefinitionArns"]:
        [container] = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["containerDefinitions"]
        commands[container["name"]] = container["command"]
    print(json.dumps(commands))

asyncio.run(start())
"""


@pytest.mark.slow  # a moto server, a real scheduler and worker
def test_fargate_task_definitions_run_with_todays_distributed(tmp_path: Path) -> None:
    """The launcher's Fargate spec given to dask-cloudprovider against moto (ECS, IAM,
    EC2, logs): the scheduler and worker task definitions it registers hold commands that,
    run as the image runs them (its PATH has deploy/docker's wrappers and the venv's
    `dask`), start a scheduler and a worker that joins it."""
    from distributed import Client

    from tests.procs import free_port, stop, wait_for_port

    with moto_server() as env:
        # In a process of its own: dask-cloudprovider's finalizers, run at interpreter exit,
        # print tracebacks about its closed event loop.
        result = subprocess.run([sys.executable, "-c", FARGATE_TASK_DEFINITIONS, str(DEPLOY / "aws")],
                                env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    commands = json.loads(result.stdout.splitlines()[-1])
    assert set(commands) == {"dask-scheduler", "dask-worker"}, commands
    image_path = {"PATH": f"{DEPLOY / 'docker'}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    port = free_port()
    scheduler = start_process([*commands["dask-scheduler"], "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=image_path)  # fmt: skip
    worker = None
    try:
        wait_for_port(port)
        address = f"tcp://127.0.0.1:{port}"
        # dask-cloudprovider gives the worker task the scheduler's address in its environment
        worker = start_process([*commands["dask-worker"], "--host", "127.0.0.1"],
                               env={**image_path, "DASK_SCHEDULER_ADDRESS": address})
        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            assert list(client.nthreads().values()) == [1]
    finally:
        for process in (worker, scheduler):
            if process is not None:
                stop(process)


@pytest.mark.slow  # a real scheduler and worker processes
def test_ec2_worker_command_runs_a_single_threaded_worker_per_vcpu() -> None:
    """The command dask-cloudprovider runs on each EC2 worker VM for the launcher's spec
    (`python -m distributed.cli.dask_spec <scheduler> --spec '{"cls": worker_class, "opts":
    {**worker_options, "name": ...}}'`) starts one single-threaded worker per CPU, and
    ends cleanly on SIGTERM."""
    from distributed import Client

    from tests.procs import free_port, stop, wait_for_port

    args = launch.build_parser().parse_args(["run.yaml", "--backend", "ec2", "--image", "img:1"])
    _, spec = launch.cluster_spec(args)
    port = free_port()
    scheduler = start_process([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0"])  # fmt: skip
    worker = None
    try:
        wait_for_port(port)
        address = f"tcp://127.0.0.1:{port}"
        worker_spec = {"cls": spec["worker_class"],
                       "opts": {**spec["worker_options"], "name": "dask-1234-worker-abcd", "host": "127.0.0.1"}}
        worker = start_process([sys.executable, "-m", "distributed.cli.dask_spec", address,
                                "--spec", json.dumps(worker_spec)])  # fmt: skip
        cpus = len(os.sched_getaffinity(0))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(cpus, timeout=60)
            info = client.scheduler_info()["workers"].values()
            assert sorted(w["name"] for w in info) == [f"dask-1234-worker-abcd-{i}" for i in range(cpus)]
            assert list(client.nthreads().values()) == [1] * cpus
        worker.terminate()
        assert worker.wait(30) == 0
    finally:
        for process in (worker, scheduler):
            if process is not None:
                stop(process)


def test_aws_print_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("root: s3://b/in\nout: s3://b/out\n")
    assert launch.main([str(config), "--image", "img:1", "--print-spec"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["class"] == "FargateCluster" and printed["kwargs"]["image"] == "img:1"
    bad = tmp_path / "bad.yaml"
    bad.write_text("root: s3://b/in\n")
    assert launch.main([str(bad), "--image", "img:1", "--print-spec"]) == 2


# --- Dockerfile ------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]  # type: ignore[misc]


def test_dockerfile_statically() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    runs = [arg for op, arg in instructions if op == "RUN"]
    installs = [cmd for run in runs for cmd in run.split("&&") if "pip install" in cmd]
    # Dependencies come from the lock file (exact versions), then the project without deps.
    assert all(re.search(r"pip install (--upgrade pip|-r requirements\.lock|--no-deps \.)$", cmd.strip())
               for cmd in installs), installs
    # ... in a layer built before the code is copied in, so code changes reuse it
    order = [(op, arg) for op, arg in instructions if op in ("COPY", "RUN")]
    deps = next(i for i, (op, arg) in enumerate(order) if "-r requirements.lock" in arg)
    code = order.index(("COPY", "sn5dask ./sn5dask"))
    assert order.index(("COPY", "deploy/requirements.lock ./")) < deps < code
    assert "--no-deps ." in order[code + 2][1]
    # dask-cloudprovider's ECS task definitions start `dask-scheduler` / `dask-worker`
    assert ("COPY", "deploy/docker/dask-scheduler deploy/docker/dask-worker /usr/local/bin/") in instructions
    assert ("USER", "sn5dask") in instructions
    # remote workers from the image keep glibc's malloc defaults (see sn5dask.runner.cluster)
    [dask_config] = [arg for op, arg in instructions if op == "RUN" and "/etc/dask/sn5dask.yaml" in arg]
    printed = re.search(r"printf '([^']*)'", dask_config).group(1).encode().decode("unicode_escape")
    assert yaml.safe_load(printed) == {"distributed": {"nanny": {"pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": None}}}}
    assert any(op == "EXPOSE" and "8786" in arg and "8787" in arg for op, arg in instructions)


def test_dockerignore_keeps_only_what_the_image_copies() -> None:
    import fnmatch

    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern[1:] if negate else pattern
            if fnmatch.fnmatch(path, body.rstrip("/")) or fnmatch.fnmatch(path, body.rstrip("/") + "/*") \
                    or fnmatch.fnmatch(path, body.replace("**/", "*/")) or fnmatch.fnmatch(path, body.replace("**/", "")):
                result = not negate
        return result

    for kept in ("pyproject.toml", "README.md", "sn5dask/__init__.py", "sn5dask/cli.py",
                 "deploy/requirements.lock", "deploy/docker/dask-worker"):
        assert not ignored(kept), kept
    for dropped in (".venv/bin/python", "sn5dask-demo/output/x.tif", ".git/HEAD", "tests/test_cli.py",
                    "deploy/k8s/daskjob.yaml",
                    "benchmarks/run_benchmark.py", "sn5dask/__pycache__/cli.cpython-311.pyc"):
        assert ignored(dropped), dropped


@pytest.mark.slow
def test_dockerfile_install_commands_in_a_fresh_venv(tmp_path: Path) -> None:
    """The Dockerfile's own RUN install lines, in a fresh venv built from a copy of what
    the COPY lines bring in; then `sn5dask demo` there."""
    import shutil

    context = tmp_path / "context"
    context.mkdir()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir)}
    environment.pop("PYTHONPATH", None)
    # In the Dockerfile's order, as a build runs them: COPY brings files in, RUN installs.
    for op, arg in dockerfile_instructions():
        if op == "COPY":  # to WORKDIR (the context) or, for an absolute one, under tmp_path/root
            *sources, destination = arg.split()
            base = tmp_path / "root" / destination.lstrip("/") if destination.startswith("/") \
                else context / destination
            for source in sources:
                src = REPO / source
                target = base / src.name if destination.endswith("/") else base
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, target)
        elif op == "RUN" and "pip install" in arg:
            result = subprocess.run(arg, shell=True, cwd=context, env=environment, capture_output=True,
                                    text=True, timeout=1200)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for wrapper in ("dask-scheduler", "dask-worker"):  # what ECS task definitions start
        shown = subprocess.run([str(tmp_path / "root/usr/local/bin" / wrapper), "--help"], env=environment,
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0 and f"Usage: dask {wrapper.split('-')[1]}" in shown.stdout, shown.stderr
    demo = subprocess.run(["sn5dask", "demo", str(tmp_path / "demo"), "--chips", "3", "--size", "64",
                           "--workers", "1"], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    rgb = next((tmp_path / "demo" / "output").rglob("PS-RGB/*.tif"))
    with rasterio.open(rgb) as src:
        assert src.count == 3 and src.dtypes[0] == "uint8"


# --- deploy/submit.sh ------------------------------------------------------------------

@pytest.mark.slow
def test_submit_script_real_cluster_and_s3(small_aoi, tmp_path: Path) -> None:
    import boto3

    with moto_server() as s3_env:
        upload_tree(s3_env, small_aoi.root, "batch")
        s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
        config = tmp_path / "run.yaml"
        config.write_text("root: s3://batch/in\nout: s3://batch/out\nformats: [geotiff, zarr]\n")
        environment = {**os.environ, **s3_env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        with real_cluster(2, env=s3_env) as cluster:
            environment["DASK_SCHEDULER_ADDRESS"] = cluster.address
            result = subprocess.run([str(DEPLOY / "submit.sh"), str(config)], env=environment,
                                    capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"running {config} on {cluster.address}" in result.stderr
        assert "6/6" in result.stderr  # the progress bar streamed
        manifest = json.loads(s3.get_object(Bucket="batch", Key="out/AOI_99_Synthetic/manifest.json")["Body"].read())
        assert manifest["counts"] == {"ok": 6, "skipped": 0, "failed": 0}

        # A chip that cannot be read: the script returns the run's exit code 1.
        s3.put_object(Bucket="batch", Key="in/AOI_99_Synthetic/PS-MS/SN5_roads_train_AOI_99_Synthetic_PS-MS_chip9.tif",
                      Body=b"not a tiff")
        environment.pop("DASK_SCHEDULER_ADDRESS")
        environment["SN5DASK_WORKERS"] = "1"
        environment["SN5DASK_SCHEDULER_PORT"] = str(__import__("tests.procs", fromlist=["free_port"]).free_port())
        config.write_text("root: s3://batch/in\nout: s3://batch/out2\nformats: [geotiff]\n")
        failed = subprocess.run([str(DEPLOY / "submit.sh"), str(config)], env=environment,
                                capture_output=True, text=True, timeout=600)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "started a scheduler" in failed.stderr and "chip9" in failed.stdout
    assert subprocess.run([str(DEPLOY / "submit.sh")], capture_output=True).returncode == 2


def test_submit_script_passes_bad_config_exit_code(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("root: /nonexistent\nout: /tmp/x\nprofile: cresi\nstretch: aoi\n")
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([str(DEPLOY / "submit.sh"), str(config)], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--stretch aoi is refused" in result.stderr
