"""The deployment files under docker/, read as files (no Docker daemon or Kubernetes here): the RayJob resumes,
authenticates every Ray process with a token from a Secret, ends and cleans up; the PodMonitor scrapes the Ray pods
and names the series cogrpo_* as the repository's Prometheus does; the image installs its dependencies at the
pinned versions before the source, ImageReward's included, from a build context that leaves the rest out."""

import ast
import json
import re
import shlex
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cogrpo.cli import build_parser
from cogrpo.proto.config import load_config
from cogrpo.rewards.image_reward import PIP_REQUIREMENTS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's own copy of the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
RAYJOB = DOCKER / "kuberay-rayjob.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def rayjob() -> dict:
    (job,) = [doc for doc in yaml.safe_load_all(RAYJOB.read_text(encoding="utf-8")) if doc["kind"] == "RayJob"]
    return job


def ray_pod_templates(job: dict) -> dict[str, dict]:
    """The pod template of the head and of each worker group, by group name."""
    cluster = job["spec"]["rayClusterSpec"]
    groups = {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    return {"head": cluster["headGroupSpec"]["template"], **groups}


def containers(job: dict) -> dict[str, dict]:
    """Every container the RayJob starts, the submitter's included, by group/container name."""
    templates = {**ray_pod_templates(job), "submitter": job["spec"]["submitterPodTemplate"]}
    return {f"{group}/{c['name']}": c for group, template in templates.items() for c in template["spec"]["containers"]}


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments), continuation lines joined and comments dropped."""
    joined, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            joined.append(pending.split(None, 1))
            pending = ""
    return [(word.upper(), rest.strip()) for word, rest in joined]


def pins(words: list[str]) -> dict[str, str]:
    """{canonical name: version} of the name==version words."""
    found = {}
    for word in words:
        if "==" in word and not word.startswith("-"):
            req = Requirement(word)
            found[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return found


DOCKERFILE = instructions(DOCKER / "Dockerfile")


def index_of(predicate) -> int:
    (index,) = [i for i, (word, args) in enumerate(DOCKERFILE) if predicate(word, args)]
    return index


def copy_sources(args: str) -> list[str]:
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    return words[:-1]


# --- the RayJob ---------------------------------------------------------------------------------------------------

def test_entrypoint_resumes_its_absolute_run_directory_with_flags_cogrpo_train_accepts():
    job = rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "cogrpo.train"]
    args = build_parser().parse_args(["train", *argv[3:]])
    assert args.resume == "auto" and Path(args.run_dir).is_absolute()
    config = Path(args.config)
    workdir = Path(dict(DOCKERFILE)["WORKDIR"])
    assert config.is_absolute() and (ROOT / config.relative_to(workdir)).is_file()
    assert all(c.get("workingDir", str(workdir)) == str(workdir) for c in containers(job).values())


def test_every_ray_process_and_the_submitter_authenticate_with_a_token_from_one_secret():
    job = rayjob()
    found = containers(job)
    assert {"head/ray-head", "rollout/ray-worker", "reward/ray-worker", "learner/ray-worker"} < set(found)
    assert any(name.startswith("submitter/") for name in found)  # KubeRay's default submitter has no token
    secrets = set()
    for name, container in found.items():
        env = {var["name"]: var for var in container["env"]}
        assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, name
        token = env["RAY_AUTH_TOKEN"]
        assert "value" not in token, name  # never in the manifest
        ref = token["valueFrom"]["secretKeyRef"]
        secrets.add((ref["name"], ref["key"]))
    assert len(secrets) == 1  # one token for the whole cluster
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert "RAY_AUTH_TOKEN" not in json.dumps(runtime_env)
    # the header's command creates that Secret with that key
    name, key = secrets.pop()
    assert re.search(rf"kubectl create secret generic {name} --from-literal={key}=", RAYJOB.read_text())


def test_job_has_a_deadline_retries_and_a_short_ttl():
    spec = rayjob()["spec"]
    for field in ("activeDeadlineSeconds", "backoffLimit"):
        assert type(spec[field]) is int and spec[field] > 0, field
    assert spec["shutdownAfterJobFinishes"] is True and 0 < spec["ttlSecondsAfterFinished"] <= 3600


def test_every_image_comes_from_the_registry_placeholder_at_the_package_version():
    images = {name: c["image"] for name, c in containers(rayjob()).items()}
    assert images and all(image == f"REGISTRY/cogrpo:{PYPROJECT['version']}" for image in images.values()), images


def test_podmonitor_selects_the_ray_pods_and_names_series_as_the_repository_prometheus_does():
    (monitor,) = yaml.safe_load_all((DOCKER / "kuberay-podmonitor.yaml").read_text(encoding="utf-8"))
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    job = rayjob()
    kuberay_labels = {"ray.io/is-ray-node": "yes"}  # what KubeRay adds to every head and worker pod
    for group, template in ray_pod_templates(job).items():
        labels = {**template.get("metadata", {}).get("labels", {}), **kuberay_labels}
        assert selector.items() <= labels.items(), group
    submitter = job["spec"]["submitterPodTemplate"].get("metadata", {}).get("labels", {})
    assert not selector.items() <= submitter.items()  # no metrics port there
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"  # KubeRay's name for --metrics-export-port (8080)

    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (ray_job,) = [scrape for scrape in prometheus["scrape_configs"] if scrape["job_name"] == "ray"]
    camel = {"source_labels": "sourceLabels", "target_label": "targetLabel"}
    expected = [{camel.get(k, k): v for k, v in rule.items()} for rule in ray_job["metric_relabel_configs"]]
    assert endpoint["metricRelabelings"] == expected
    (rule,) = endpoint["metricRelabelings"]
    renamed = re.fullmatch(rule["regex"], "ray_cogrpo_iteration").expand(rule["replacement"].replace("$", "\\"))
    assert renamed == "cogrpo_iteration" and re.fullmatch(rule["regex"], "ray_node_cpu_utilization") is None


# --- the image ----------------------------------------------------------------------------------------------------

def constraints() -> dict[str, str]:
    lines = (DOCKER / "constraints.txt").read_text(encoding="utf-8").splitlines()
    return pins([line for line in lines if line.strip() and not line.startswith("#")])


def makefile_torch() -> list[str]:
    (line,) = [line for line in (ROOT / "Makefile").read_text().splitlines() if re.match(r"TORCH\s*:=", line)]
    return line.split(":=", 1)[1].split()


def project_requirements() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["models"]]


def test_constraints_pin_what_pyproject_and_the_makefile_pin_and_meet_every_range():
    pinned = constraints()
    for req in project_requirements():
        version = pinned[canonicalize_name(req.name)]
        if str(req.specifier).startswith("=="):
            assert f"=={version}" == str(req.specifier), req
        assert req.specifier.contains(version), req
    assert pins(makefile_torch()).items() <= pinned.items()


def test_dependencies_install_pinned_before_the_source_is_copied():
    deps = index_of(lambda word, args: word == "RUN" and "deepspeed" in args and "ray[default]" in args)
    torch = index_of(lambda word, args: word == "RUN" and "torch==" in args)
    source = index_of(lambda word, args: word == "COPY" and copy_sources(args) == ["cogrpo"])
    assert torch < deps < source
    # before the dependencies, only the constraints file is copied: no source edit reaches those layers
    (constraints_copy,) = [args for word, args in DOCKERFILE[:deps] if word == "COPY"]
    assert copy_sources(constraints_copy) == ["docker/constraints.txt"]
    for index in (torch, deps):
        words = shlex.split(DOCKERFILE[index][1])
        assert words[:2] == ["pip", "install"] and words[words.index("-c") + 1] == shlex.split(constraints_copy)[-1]
    assert pins(shlex.split(DOCKERFILE[torch][1])) == pins(makefile_torch())
    # every dependency of pyproject.toml, with its extras, by name (the versions come from the constraints); the
    # final install adds none (--no-deps)
    named = {}
    for index in (torch, deps):
        words = shlex.split(DOCKERFILE[index][1])
        named |= {canonicalize_name(req.name): req.extras for req in map(Requirement, words[words.index("-c") + 2:])}
    for req in project_requirements():
        assert req.extras <= named[canonicalize_name(req.name)], req
    final = DOCKERFILE[-2] if DOCKERFILE[-1][0] == "CMD" else DOCKERFILE[-1]
    assert final[0] == "RUN" and "pip install --no-deps ." in final[1] and "pip check" in final[1]


def test_image_reward_is_installed_in_the_image_where_the_documented_runtime_env_points():
    overlay = index_of(lambda word, args: word == "RUN" and "--target" in args)
    source = index_of(lambda word, args: word == "COPY" and copy_sources(args) == ["cogrpo"])
    assert overlay < source
    command = shlex.split(DOCKERFILE[overlay][1].split("&&")[0])
    assert "--no-deps" in command
    target = command[command.index("--target") + 1]
    installed = pins(command)
    for spec in PIP_REQUIREMENTS:  # every pin of the reward's, at a version it admits
        req = Requirement(spec)
        assert req.specifier.contains(installed[canonicalize_name(req.name)]), spec
    # and what the venv lacks of their dependencies, as the ImageReward test layers them
    source_tree = ast.parse((ROOT / "tests" / "rewards" / "test_image_reward.py").read_text(encoding="utf-8"))
    (missing,) = [ast.literal_eval(node.value) for node in source_tree.body if isinstance(node, ast.Assign)
                  and [getattr(t, "id", None) for t in node.targets] == ["MISSING_HERE"]]
    assert {canonicalize_name(name) for name in missing} <= installed.keys()
    # the config the Dockerfile documents is one the schema takes, pointing at that folder
    (snippet,) = re.findall(r"^#\s+(cluster: \{reward_runtime_env: .*\})$", (DOCKER / "Dockerfile").read_text(),
                            re.MULTILINE)
    runtime_env = yaml.safe_load(snippet)["cluster"]["reward_runtime_env"]
    config = load_config(ROOT / "configs" / "meissonic-multinode.yaml",
                         [f"cluster.reward_runtime_env={json.dumps(runtime_env)}"])
    assert config.cluster.reward_runtime_env == {"env_vars": {"PYTHONPATH": target}}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides; `!` keeps."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        keep = pattern.startswith("!")
        body = re.escape(pattern.removeprefix("!")).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(body, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not keep
    return excluded


def test_dockerignore_keeps_what_the_image_copies_and_leaves_out_the_venv_and_runs():
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", "runs/20260101-000000-cogrpo/metrics.jsonl", ".git/HEAD",
                 "cogrpo/__pycache__/train.cpython-312.pyc", "cogrpo.egg-info/PKG-INFO"):
        assert dockerignored(path, patterns), path
    copied = [source for word, args in DOCKERFILE if word == "COPY" for source in copy_sources(args)]
    assert {"pyproject.toml", "cogrpo", "configs", "docker/constraints.txt"} <= set(copied)
    for source in copied:
        top = ROOT / source
        files = [p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts] if top.is_dir() else [top]
        assert files, source
        for file in files:
            assert not dockerignored(file.relative_to(ROOT).as_posix(), patterns), file
