"""Run sn5dask on AWS: a dask-cloudprovider cluster (ECS/Fargate or EC2) running the
project's Docker image as scheduler and workers, then the same `sn5dask.run` as locally.

    pip install 'sn5dask[aws]'
    python deploy/aws/launch.py run.yaml --backend fargate --workers 16 \
        --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/sn5dask:0.1.0 \
        --region us-east-1 --task-role-arn arn:aws:iam::123456789012:role/sn5dask-task

    python deploy/aws/launch.py run.yaml --print-spec ...   # show the cluster spec only

See deploy/README.md for the IAM roles, the S3 permissions and the cost notes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

BACKENDS = ("fargate", "ec2")
# One single-threaded worker per vCPU, like the LocalCluster: the per-chip work holds the
# GIL often enough that processes beat threads. ~1.5 GiB per worker is ample (benchmarks:
# peak worker RSS stays well under 1 GiB with full-size chips).
WORKER_MEMORY_MIB_PER_VCPU = 2048


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="sn5dask run config (YAML); root/out should be s3:// URLs")
    parser.add_argument("--backend", choices=BACKENDS, default="fargate")
    parser.add_argument("--image", required=True, help="the project's image in a registry AWS can pull")
    parser.add_argument("--workers", type=int, default=8,
                        help="Fargate: worker tasks (one process each); EC2: worker VMs (one process per vCPU)")
    parser.add_argument("--worker-vcpu", type=float, default=1.0, help="vCPU per worker (Fargate)")
    parser.add_argument("--worker-memory-mib", type=int, default=None, help="memory per worker (Fargate)")
    parser.add_argument("--instance-type", default="c6i.xlarge", help="EC2 instance type (ec2)")
    parser.add_argument("--region", default=None, help="AWS region (default: your AWS config)")
    parser.add_argument("--task-role-arn", default=None, help="IAM role the tasks assume (S3 access)")
    parser.add_argument("--execution-role-arn", default=None, help="ECS execution role (image pull, logs)")
    parser.add_argument("--iam-instance-profile", default=None, help="EC2 instance profile name (ec2)")
    parser.add_argument("--subnet", action="append", default=None, help="subnet id (repeatable)")
    parser.add_argument("--security-group", action="append", default=None, help="security group id")
    parser.add_argument("--spot", action="store_true", help="Fargate Spot / EC2 spot workers")
    parser.add_argument("--print-spec", action="store_true", help="print the cluster spec and exit")
    return parser


def cluster_spec(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(dask_cloudprovider.aws class name, its keyword arguments) for these flags. Pure."""
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    environment = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "3",
        # each S3 chip downloaded once: its write task stays where the scan kept the copy
        "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING": "False",
    }
    tags = {"project": "sn5dask"}
    if args.backend == "fargate":
        vcpu_units = int(round(args.worker_vcpu * 1024))
        memory = args.worker_memory_mib or int(WORKER_MEMORY_MIB_PER_VCPU * max(args.worker_vcpu, 1))
        spec: dict[str, Any] = {
            "image": args.image,
            "n_workers": args.workers,
            "worker_cpu": vcpu_units,
            "worker_mem": memory,
            "worker_nthreads": 1,
            "scheduler_cpu": 1024,
            "scheduler_mem": 4096,
            "scheduler_timeout": "15 minutes",
            "fargate_spot": bool(args.spot),
            "environment": environment,
            "tags": tags,
        }
        if args.region:
            spec["region_name"] = args.region
        if args.task_role_arn:
            spec["task_role_arn"] = args.task_role_arn
        if args.execution_role_arn:
            spec["execution_role_arn"] = args.execution_role_arn
        if args.subnet:
            spec["subnets"] = args.subnet
        if args.security_group:
            spec["security_groups"] = args.security_group
        return "FargateCluster", spec
    spec = {
        "docker_image": args.image,
        "n_workers": args.workers,  # VMs
        "instance_type": args.instance_type,
        # one single-threaded worker process per vCPU of each VM (dask-cloudprovider's
        # default, one Nanny per VM, leaves 3 of a c6i.xlarge's 4 vCPUs idle)
        "worker_class": "sn5dask.runner.vmworkers.NannyPerCPU",
        "worker_options": {"nthreads": 1},
        "env_vars": environment,
        "instance_tags": tags,
        "spot": bool(args.spot),
        "security": True,
    }
    if args.region:
        spec["region"] = args.region
    if args.iam_instance_profile:
        spec["iam_instance_profile"] = {"Name": args.iam_instance_profile}
    if args.subnet:
        spec["subnet_id"] = args.subnet[0]
    if args.security_group:
        spec["security_groups"] = args.security_group
    return "EC2Cluster", spec


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import sn5dask
    from sn5dask.errors import Sn5daskError

    try:
        config = sn5dask.load_config(args.config)
    except Sn5daskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    class_name, spec = cluster_spec(args)
    if args.print_spec:
        print(json.dumps({"class": class_name, "kwargs": spec}, indent=1))
        return 0

    import dask_cloudprovider.aws as aws
    from distributed import Client

    cluster_class = getattr(aws, class_name)
    with cluster_class(**spec) as cluster, Client(cluster) as client:
        print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
        summary = sn5dask.run(config, client=client)  # the same code path as a local run
    for aoi in summary.aois:
        print(f"{aoi.aoi}: {aoi.counts} in {aoi.seconds:.0f} s ({aoi.chips_per_second:.2f} chips/s); "
              f"manifest {aoi.manifest}")
        for chip_id, reason in aoi.failures:
            print(f"failed {aoi.aoi} {chip_id}: {reason}")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
