"""The deploy files: KubeRay manifests valid against the CRDs, every command a real `restore` command line.

The CRDs come from ../shared/schemas/kuberay beside the repository when it is there; without it the manifests
are checked for the fields KubeRay requires. The tests build no container image (that needs a container
runtime): the Dockerfile is read and checked instead.
"""
import argparse
import copy
import functools
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from restore.cli import build_parser
from restore.spec import parse_spec

DEPLOY = Path(__file__).parents[1] / "deploy"
SCHEMAS = Path(__file__).parents[2] / "shared" / "schemas" / "kuberay"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
MANIFESTS = ("jobs-configmap.yaml", "raycluster.yaml", "rayjob.yaml", "raycronjob.yaml", "cronjob-rayjob.yaml")


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def all_documents() -> list[tuple[str, dict]]:
    """Every document of every manifest, plus the RayJob template that the CronJob's ConfigMap carries."""
    found = []
    for name in MANIFESTS:
        for doc in documents(name):
            found.append((name, doc))
            if doc["kind"] == "ConfigMap" and "rayjob.yaml" in doc.get("data", {}):
                found.append((f"{name} (template)", yaml.safe_load(doc["data"]["rayjob.yaml"])))
    return found


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in all_documents() if doc["kind"] == kind]


def strict(schema):
    """The CRD schema refusing unknown fields, as `kubectl apply --validate=strict` does, so a typo fails."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


@functools.lru_cache(maxsize=None)
def crd_schemas() -> dict[str, dict]:
    """kind -> openAPIV3Schema of the CRD's storage version; empty when the schema folder is absent."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.yaml")) if SCHEMAS.is_dir() else []:
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        schemas[crd["spec"]["names"]["kind"]] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def crd_schema(kind: str) -> dict | None:
    if not SCHEMAS.is_dir():
        return None
    assert kind in crd_schemas(), f"no CRD for {kind} in {SCHEMAS}"
    return crd_schemas()[kind]


REQUIRED = {  # what KubeRay cannot do without, checked with or without the CRDs
    "RayCluster": [("spec", "headGroupSpec", "template", "spec", "containers")],
    "RayJob": [("spec", "entrypoint")],
    "RayCronJob": [("spec", "schedule"), ("spec", "jobTemplate", "entrypoint")],
}


def problems(doc: dict) -> list[str]:
    """Why a KubeRay manifest would be refused: schema errors where the CRD is known, missing fields always."""
    import jsonschema

    found = []
    if doc.get("apiVersion") != "ray.io/v1":
        found.append(f"apiVersion: expected ray.io/v1, got {doc.get('apiVersion')!r}")
    if not (doc.get("metadata", {}).get("name") or doc.get("metadata", {}).get("generateName")):
        found.append("metadata: needs a name or generateName")
    for path in REQUIRED[doc["kind"]]:
        node = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not node:
            found.append(f"{'.'.join(path)}: missing")
    if doc["kind"] == "RayCluster":
        for group in doc["spec"].get("workerGroupSpecs", []):
            found += [f"workerGroupSpecs[{group.get('groupName')}].{key}: missing"
                      for key in ("groupName", "minReplicas", "maxReplicas", "template") if key not in group]
    schema = crd_schema(doc["kind"])
    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        found += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
    return found


@pytest.mark.parametrize("name,doc", [pair for pair in all_documents() if pair[1]["kind"] in KUBERAY_KINDS],
                         ids=lambda value: value if isinstance(value, str) else value["kind"])
def test_kuberay_manifest_is_valid(name, doc):
    assert problems(doc) == [], name


def test_validation_catches_a_broken_manifest():
    rayjob = copy.deepcopy(documents("rayjob.yaml")[0])
    del rayjob["spec"]["entrypoint"]
    assert "spec.entrypoint: missing" in problems(rayjob)
    if crd_schema("RayJob") is None:
        pytest.skip("no CRD schemas beside the repository: only required fields were checked")
    rayjob = copy.deepcopy(documents("rayjob.yaml")[0])
    rayjob["spec"]["entryPoint"] = rayjob["spec"].pop("entrypoint")  # a misspelt field
    assert any("entryPoint" in problem for problem in problems(rayjob))


def check_command(argv: list[str], where: str) -> None:
    """argv must run the `restore` program with a verb and options that its parser accepts."""
    assert argv and Path(argv[0]).name == "restore", f"{where}: not a restore command: {argv}"
    parser = build_parser()
    verbs = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(argv) > 1 and argv[1] in verbs, f"{where}: {argv[1:2]} is not one of the verbs {sorted(verbs)}"
    try:
        parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: restore refuses the arguments {argv[1:]}")


ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def shell_command(line: str) -> list[str]:
    """The first simple command of a shell line: its words up to the first redirection or operator, after the
    variables it sets for the command (NAME=value)."""
    words = []
    for word in shlex.split(line):
        if word in ("&&", "||", "|", ";") or word.startswith((">", "2>", "<")):
            break
        if words or not ASSIGNMENT.match(word):
            words.append(word)
    return words


def test_job_entrypoints_are_restore_commands_reading_mounted_specs():
    specs = {key for cm in by_kind("ConfigMap") if cm["metadata"]["name"] == "restore-jobs" for key in cm["data"]}
    entrypoints = [doc["spec"]["entrypoint"] for doc in by_kind("RayJob")]
    entrypoints += [doc["spec"]["jobTemplate"]["entrypoint"] for doc in by_kind("RayCronJob")]
    assert len(entrypoints) == 3  # rayjob.yaml, raycronjob.yaml and the CronJob's template
    for entrypoint in entrypoints:
        argv = shlex.split(entrypoint)
        check_command(argv, entrypoint)
        spec = Path(argv[2])
        assert spec.parent == Path("/jobs") and spec.name in specs, f"{entrypoint}: no such spec in restore-jobs"


def test_jobs_run_on_the_cluster_that_mounts_their_specs():
    cluster = documents("raycluster.yaml")[0]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    config_maps = {v["name"]: v["configMap"]["name"] for v in head["volumes"] if "configMap" in v}
    assert mounts["jobs"] == "/jobs" and config_maps["jobs"] == "restore-jobs"
    selectors = [doc["spec"]["clusterSelector"] for doc in by_kind("RayJob")]
    selectors += [doc["spec"]["jobTemplate"]["clusterSelector"] for doc in by_kind("RayCronJob")]
    assert selectors and all(s == {"ray.io/cluster": cluster["metadata"]["name"]} for s in selectors)


def test_the_cluster_has_a_cpu_head_and_a_gpu_worker_group():
    spec = documents("raycluster.yaml")[0]["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head.get("limits", {})
    gpu_groups = [group for group in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in group["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"


def test_job_specs_in_the_configmap_validate():
    [jobs] = [cm for cm in by_kind("ConfigMap") if cm["metadata"]["name"] == "restore-jobs"]
    assert jobs["data"]
    for key, text in jobs["data"].items():
        assert parse_spec(yaml.safe_load(text), source=f"restore-jobs/{key}").name


def test_cronjob_creates_its_rayjob_with_just_enough_rights():
    docs = {doc["kind"]: doc for doc in documents("cronjob-rayjob.yaml")}
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:2] == ["kubectl", "create"]
    template = Path(container["command"][container["command"].index("-f") + 1])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(template.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert yaml.safe_load(docs["ConfigMap"]["data"][template.name])["kind"] == "RayJob"
    assert docs["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert docs["Role"]["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]


def test_dockerfile_runs_a_restore_command_on_a_cuda_runtime_with_the_clusters_ray():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S*runtime\S*$", text, re.MULTILINE)
    instructions = dict(re.findall(r"^(ENTRYPOINT|CMD) (\[.*\])$", text, re.MULTILINE))
    check_command(json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions["CMD"]), "Dockerfile")
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.MULTILINE).group(1)
    assert documents("raycluster.yaml")[0]["spec"]["rayVersion"] == ray_version


def test_systemd_units_run_restore_nightly():
    service = (DEPLOY / "restore-nightly.service").read_text()
    assert re.search(r"^Type=oneshot$", service, re.MULTILINE)
    assert re.search(r"^TimeoutStartSec=\d+h$", service, re.MULTILINE)  # else a hung run silently blocks every night
    check_command(shlex.split(re.search(r"^ExecStart=(.+)$", service, re.MULTILINE).group(1)), "ExecStart")
    timer = (DEPLOY / "restore-nightly.timer").read_text()
    assert re.search(r"^OnCalendar=\S", timer, re.MULTILINE) and "WantedBy=timers.target" in timer


def test_crontab_line_in_the_readme_runs_restore():
    readme = (DEPLOY / "README.md").read_text()
    lines = [line for block in re.findall(r"```crontab\n(.*?)```", readme, re.DOTALL)
             for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert lines, "no crontab line in deploy/README.md"
    for line in lines:
        fields = line.split(None, 5)
        assert len(fields) == 6, f"not a crontab line (5 time fields, then a command): {line}"
        check_command(shell_command(fields[5]), line)
        assert fields[5].startswith("RAY_ADDRESS=local "), f"a run of its own, as the systemd unit's: {line}"
