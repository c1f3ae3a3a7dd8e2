"""cluster.yaml: valid for Ray's own cluster launcher, and safe to bring up on AWS.

Ray's validation is the launcher's own: `prepare_config` fills the AWS defaults and merges the setup
commands, then `validate_config` checks the result against ray-schema.json (no AWS calls).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
# Ports that must never face the internet: dashboard + job server, Ray Client, GCS, object manager.
PRIVATE_PORTS = {8265, 10001, 6379, 8076, 52365, 44217, 44227}
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(config))


def test_passes_rays_schema_validation(prepared):
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validation_is_able_to_fail(config):
    # The check above means something: a misspelt node-type field is rejected.
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu"]["max_worker"] = 4
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))


def test_node_types_cpu_head_cpu_workers_gpu_from_zero(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert head["resources"].get("CPU") == 0  # the head schedules no tasks
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    gpu_types = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu_types = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
    assert gpu_types and cpu_types
    for t in gpu_types:
        assert t["min_workers"] == 0
        assert t["max_workers"] >= 1
    for t in cpu_types:
        assert t["resources"].get("CPU", 0) > 0
    assert sum(t["max_workers"] for t in workers.values()) <= prepared["max_workers"]
    # Stateless worker types run on spot; the head (which the cluster dies with) does not.
    assert "InstanceMarketOptions" not in head["node_config"]
    for t in cpu_types:
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


def test_every_node_type_has_an_instance_profile(prepared):
    for name, t in prepared["available_node_types"].items():
        profile = t["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), name


def test_no_aws_keys_anywhere(text):
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)
    lowered = text.lower()
    for needle in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "secret_key"):
        assert needle not in lowered, needle
    # The shape of a secret access key: 40 base64 characters, mixed case and digits.
    for token in re.findall(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text):
        assert not (re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"\d", token)), token


def test_no_internet_facing_ingress(config, prepared, text):
    # Ray's auto-created security group opens SSH to the world, so every node type names a
    # user-made group (SSH from an admin CIDR + intra-group traffic, documented in the file).
    for name, t in prepared["available_node_types"].items():
        assert t["node_config"].get("SecurityGroupIds"), name
    # No rule anywhere in the file lets the world in, on any port, least of all Ray's own ports.
    for token in WORLD:
        assert token not in text
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        ports = set(range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1))
        assert not (cidrs & WORLD and ports & PRIVATE_PORTS), rule
    # The dashboard / job server binds to the head's loopback (reached through `ray dashboard`).
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


def test_setup_installs_defectray_from_the_mounted_wheel(prepared):
    mounted = prepared["file_mounts"]
    remote = next(r for r, local in mounted.items() if local.rstrip("/").endswith("dist"))
    command_lists = [prepared["head_setup_commands"], prepared["worker_setup_commands"]]
    command_lists += [t["worker_setup_commands"] for t in prepared["available_node_types"].values()
                      if "worker_setup_commands" in t]
    for commands in command_lists:
        joined = " ".join(commands)
        assert f"{remote}/defectray-" in joined and ".whl" in joined
        assert "--force-reinstall" in joined  # same version number, new code still lands


def test_ray_version_pinned_to_the_client(config):
    import ray

    images = [config["docker"]["image"]]
    images += [t["docker"]["worker_image"] for t in config["available_node_types"].values() if "docker" in t]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-"), image
