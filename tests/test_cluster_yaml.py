"""cluster.yaml, checked with the Ray cluster launcher's own validation, offline.

`ray up` prepares a config (prepare_config: Ray's AWS defaults.yaml merged in, setup commands
merged, per-type worker counts filled) and validates it (validate_config: Ray's JSON schema
plus a few cross-field checks). Neither step calls AWS; the steps that do (detecting
instance resources, creating roles, key pairs, security groups) come after, in
`_bootstrap_config`, and are not run here. No Ray is started.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
HEAD = "ray.head.default"
STORE = "kvnode.worker"
KVNODE = "kvnode"
RAY_DEFAULT_RECONNECT_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def config() -> dict:
    with open(ROOT / "cluster.yaml") as f:
        loaded = yaml.safe_load(f)
    assert isinstance(loaded, dict), "cluster.yaml must hold a mapping"
    return loaded


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    result = prepare_config(copy.deepcopy(config))
    validate_config(result)
    return result


def ray_validate(cfg: dict) -> None:
    """Both ways Ray checks a config: as written, and as `ray up` prepares it."""
    validate_config(copy.deepcopy(cfg))
    validate_config(prepare_config(copy.deepcopy(cfg)))


def ray_pin() -> str:
    """The Ray version pyproject.toml pins dynaray to, e.g. "2.60.*"."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray\s*==\s*(\S+)", d.strip()))]
    assert len(pins) == 1, f"expected one `ray==...` pin in pyproject.toml, found {deps}"
    return pins[0]


def setup_commands_of(prepared: dict, node_type: str) -> list[str]:
    """What the launcher runs at setup on a machine of node_type, by Ray's rules: the head
    runs head_setup_commands; a worker type's own worker_setup_commands, when it has them,
    replace the merged global list (setup_commands + worker_setup_commands)."""
    if node_type == prepared["head_node_type"]:
        return prepared["head_setup_commands"]
    own = prepared["available_node_types"][node_type].get("worker_setup_commands")
    return own if own is not None else prepared["worker_setup_commands"]


def start_command(commands: list[str], marker: str) -> str:
    """The one start command containing marker (env vars must sit in the same shell)."""
    found = [c for c in commands if marker in c]
    assert len(found) == 1, f"expected one command with {marker!r}, got {found}"
    return found[0]


def env_before(command: str, name: str, marker: str) -> str:
    """The value the command gives env var `name` before `marker` runs; fails if it does not."""
    match = re.search(rf"(?:^|[\s;])(?:export\s+)?{re.escape(name)}=(\S+)", command)
    assert match, f"{name} is not set in {command!r}"
    assert match.start() < command.index(marker), f"{name} is set after {marker!r}"
    return match.group(1)


# -- Ray's own validation ---------------------------------------------------------------------


def test_yaml_loads_with_the_pyyaml_ray_ships():
    assert hasattr(yaml, "safe_load")


def test_raw_config_passes_ray_validation(config):
    # validate_config on an unprepared config also wants `cluster_synced_files` (prepare_config
    # would fill it in); cluster.yaml states it, so the file as written passes too.
    validate_config(copy.deepcopy(config))


def test_prepared_config_passes_ray_validation(config, prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    assert prepared["head_node_type"] == HEAD
    # prepare_config filled the head's worker count, as `ray up` does.
    assert prepared["available_node_types"][HEAD]["max_workers"] == 0
    # and left the input alone
    assert "docker" not in config


def _set(path: tuple, value):
    def mutate(cfg: dict) -> None:
        target = cfg
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(path: tuple):
    def mutate(cfg: dict) -> None:
        target = cfg
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


# Each broken copy, and the words of Ray's error that show it was caught for that reason.
BROKEN = {
    "max_workers not an integer": (_set(("max_workers",), "ten"), "'ten' is not of type"),
    "unknown top-level key": (_set(("max_worker",), 10), "'max_worker' was unexpected"),
    "unknown key in a node type": (
        _set(("available_node_types", STORE, "setup_commands"), []),
        "'setup_commands' was unexpected",
    ),
    "fractional resource": (
        _set(("available_node_types", STORE, "resources", KVNODE), 0.5),
        "0.5 is not of type 'integer'",
    ),
    "min_workers not an integer": (
        _set(("available_node_types", STORE, "min_workers"), "3"),
        "'3' is not of type 'integer'",
    ),
    "node type without node_config": (
        _drop(("available_node_types", STORE, "node_config")),
        "'node_config' is a required property",
    ),
    "head type not among the node types": (
        _set(("head_node_type",), "ray.head.missing"),
        "must be one of `available_node_types`",
    ),
    "min_workers above the global max_workers": (
        _set(("available_node_types", STORE, "min_workers"), 11),
        "smaller than the sum of `min_workers`",
    ),
    "auth with an unknown field": (
        _set(("auth", "ssh_username"), "ubuntu"),
        "'ssh_username' was unexpected",
    ),
}


@pytest.mark.parametrize(("mutate", "reason"), BROKEN.values(), ids=list(BROKEN))
def test_ray_validation_rejects_a_broken_copy(config, mutate, reason):
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(reason)):
        validate_config(copy.deepcopy(broken))
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(reason)):
        validate_config(prepare_config(copy.deepcopy(broken)))


def test_the_unbroken_copy_passes_the_same_checks(config):
    ray_validate(copy.deepcopy(config))  # so the rejections above are about the mutation


# -- the store's placement --------------------------------------------------------------------


def test_only_the_store_worker_type_carries_kvnode(config):
    types = config["available_node_types"]
    assert config["head_node_type"] == HEAD
    assert KVNODE not in types[HEAD]["resources"], "store nodes must never run on the head"
    carriers = [name for name, t in types.items() if KVNODE in t.get("resources", {})]
    assert carriers == [STORE]
    value = types[STORE]["resources"][KVNODE]
    assert value == 1 and type(value) is int, "one store node per machine: kvnode must be 1"


def test_store_worker_counts(config):
    store = config["available_node_types"][STORE]
    assert store["min_workers"] >= 3, "fewer machines than N=3 replicas cannot hold a store"
    assert store["max_workers"] <= 10
    assert store["min_workers"] <= store["max_workers"] <= config["max_workers"]
    assert config["available_node_types"][HEAD].get("min_workers", 0) == 0


def test_store_workers_keep_their_data_volume(config):
    store = config["available_node_types"][STORE]
    node_config = store["node_config"]
    kept = [
        m
        for m in node_config["BlockDeviceMappings"]
        if m.get("Ebs", {}).get("DeleteOnTermination") is False
    ]
    assert len(kept) == 1, "one EBS data volume that outlives its instance"
    assert "InstanceMarketOptions" not in node_config, "no spot instances for store machines"
    assert config["provider"].get("cache_stopped_nodes") is True
    script = "\n".join(store["initialization_commands"])
    assert "/data" in script and "fstab" in script and "mount" in script
    assert script.index("blkid") < script.index("mkfs"), "format only after checking the disk"


# -- software and start commands --------------------------------------------------------------


@pytest.mark.parametrize("node_type", [HEAD, STORE])
def test_setup_installs_pinned_ray_and_dynaray(prepared, node_type):
    commands = setup_commands_of(prepared, node_type)
    joined = "\n".join(commands)
    assert f'"ray[default]=={ray_pin()}"' in joined, f"{node_type} must install the pinned Ray"
    assert ray_pin().startswith("2.60")
    assert any("pip install" in c and "dynaray" in c for c in commands)
    if node_type == HEAD:
        assert "boto3" in joined, "the head's autoscaler needs boto3"


def test_head_start_has_gcs_fault_tolerance(config):
    marker = "ray start --head"
    command = start_command(config["head_start_ray_commands"], marker)
    redis = env_before(command, "RAY_REDIS_ADDRESS", marker)
    assert re.fullmatch(r"[\w.-]+:\d+", redis), f"RAY_REDIS_ADDRESS should be host:port, {redis!r}"
    assert env_before(command, "RAY_external_storage_namespace", marker)
    assert "--port=6379" in command
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in command
    assert env_before(command, "RAY_AUTH_MODE", marker) == "token"


def test_workers_wait_for_the_gcs(config):
    marker = "ray start --address="
    command = start_command(config["worker_start_ray_commands"], marker)
    assert "--address=$RAY_HEAD_IP:6379" in command
    timeout = int(env_before(command, "RAY_gcs_rpc_server_reconnect_timeout_s", marker))
    assert timeout > RAY_DEFAULT_RECONNECT_TIMEOUT_S, "must wait longer than Ray's default"
    assert env_before(command, "RAY_AUTH_MODE", marker) == "token"


def test_token_reaches_every_machine(config):
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
