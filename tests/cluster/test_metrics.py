"""Metrics: the row-to-metric mapping, the dashboard's queries against what the code really exports, and a real
Prometheus scraping a training run (driver endpoint) and Ray's export, both through docker/prometheus/prometheus.yml."""

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from cogrpo.cluster.loop import trainer
from cogrpo.cluster.metrics import METRICS, MetricsSink, eval_samples, row_samples
from cogrpo.proto.config import MetricsConfig
from cogrpo.proto.errors import InputError
from cogrpo.proto.kinds import MASKED_IMAGE_KNOBS

KNOBS = [knob.name for knob in MASKED_IMAGE_KNOBS]

DOCKER = Path(__file__).resolve().parents[2] / "docker"
# a row as the Ray runtime logs it, with the keys fault handling adds
ROW = {"iteration": 3, "reward/shapes_strict": 0.25, "reward_std/shapes_strict": 0.4, "adv_std": 0.9,
       "rollout_s": 2.0, "update_s": 0.5, "iteration_s": 2.6, "images": 16, "images_per_s": 8.0,
       "train_theta": True, "train_phi": False, "clip_frac_theta": 0.1, "approx_kl_theta": 0.01,
       "weight_version": 3, "staleness": 0.5, "sync_s": 0.02, "actor_restarts": {"rollout": 1, "reward": 0},
       "reward_failures": {"shapes_strict": 2}, "reward_timeouts": {"shapes_strict": 1}, "dropped_groups": 1}


EVAL_ROW = {"iteration": 40, "split": "heldout", "steps": 8, "overall": 0.4, "strict": 0.41, "partial": 0.56,
            "by_task": {"colors": 0.9}, "images": 400, "reward/shapes_strict": 0.41, "reward_std/shapes_strict": 0.49}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_a_row_becomes_gauges_counters_and_a_histogram_sample():
    samples = {(name, tuple(sorted(tags.items()))): value for name, value, tags in row_samples(ROW)}
    assert samples[("cogrpo_reward_mean", (("reward", "shapes_strict"),))] == 0.25
    assert samples[("cogrpo_reward_std", (("reward", "shapes_strict"),))] == 0.4
    assert samples[("cogrpo_clip_fraction", (("policy", "theta"),))] == 0.1
    assert math.isnan(samples[("cogrpo_clip_fraction", (("policy", "phi"),))])  # not trained: a gap, not stale
    assert samples[("cogrpo_images_generated", ())] == 16
    assert samples[("cogrpo_weight_sync_seconds", ())] == 0.02
    assert samples[("cogrpo_iteration_seconds", ())] == 2.6  # observed, not set: no iteration lost between scrapes
    assert METRICS["cogrpo_iteration_seconds"].kind == "histogram"
    assert samples[("cogrpo_actor_restarts", (("role", "rollout"),))] == 1
    assert ("cogrpo_actor_restarts", (("role", "reward"),)) not in samples  # a counter never moves by 0
    assert samples[("cogrpo_reward_failures", (("reward", "shapes_strict"),))] == 2
    assert samples[("cogrpo_dropped_groups", ())] == 1
    assert {name for name, _ in samples} <= set(METRICS)


def test_an_evaluation_row_becomes_its_score_and_mean_rewards_per_split_and_step_count():
    assert eval_samples(EVAL_ROW) == [
        ("cogrpo_eval_score", 0.4, {"split": "heldout", "steps": "8"}),
        ("cogrpo_eval_reward", 0.41, {"split": "heldout", "steps": "8", "reward": "shapes_strict"})]


def exported_names(url: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in fetch(url).splitlines() if line.startswith("cogrpo_")}


def test_every_dashboard_query_names_a_metric_the_code_exports():
    """The names come from the driver endpoint's own /metrics after one full row and a schedule (counters as
    `_total`, the histogram as `_bucket`/`_sum`/`_count`): Ray exports the same names behind a `ray_` prefix,
    which the shipped Prometheus config strips (checked against Ray in the last test)."""
    sink = MetricsSink(MetricsConfig(port=0), ray_export=False)
    try:
        sink.record_run("runs/a", "cogrpo", "tiny_mdm")
        sink.record(ROW)
        sink.record(ROW)
        sink.record_schedule(torch.rand(4, len(KNOBS)), KNOBS)
        sink.record_eval(EVAL_ROW)
        text = fetch(sink.url)
        exported = exported_names(sink.url)
    finally:
        sink.close()
    dashboard = json.loads((DOCKER / "grafana" / "cogrpo.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    queried = {name for q in queries for name in re.findall(r"cogrpo_\w+", q)}
    assert queried - exported == set()
    base = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in queried}
    assert set(METRICS) - base == set(), "every metric has a panel"
    assert 'cogrpo_run_info{mode="cogrpo",model="tiny_mdm",run="runs/a"} 1.0' in text
    assert "cogrpo_iteration_seconds_count 2.0" in text and 'cogrpo_iteration_seconds_bucket{le="5.0"} 2.0' in text
    assert all("max by (le)" not in q for q in queries), "a quantile over several series sums their buckets"


def test_the_endpoint_binds_loopback_by_default_and_a_taken_port_is_bad_input():
    sink = MetricsSink(MetricsConfig(port=0), ray_export=False)
    try:
        assert sink.url.startswith("http://127.0.0.1:")
        port = int(sink.url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(InputError, match=f"metrics endpoint 127.0.0.1:{port}: .*in use"):
            MetricsSink(MetricsConfig(port=port), ray_export=False)
    finally:
        sink.close()


# ---- a real Prometheus ----

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package "
                                      "`prometheus`; .ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_config(tmp_path: Path, driver: str, sd_file: Path) -> Path:
    """docker/prometheus/prometheus.yml with this test's targets and a 1 s scrape interval; its relabelling kept."""
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["ray"]["file_sd_configs"][0]["files"] = [str(sd_file)]
    jobs["cogrpo-driver"]["static_configs"][0]["targets"] = [driver]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tmp_path):
    """start(config) -> a query function; the server listens on loopback and is stopped after the test."""
    procs = []

    def start(config: Path):
        address = f"127.0.0.1:{free_port()}"
        log = open(tmp_path / "prometheus.log", "w")
        procs.append(subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--web.listen-address={address}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}"], stdout=log, stderr=log))

        def query(promql: str, until, timeout: float = 60.0) -> list[dict]:
            """Poll the HTTP API until `until(result)` holds."""
            deadline = time.time() + timeout
            result: list[dict] = []
            while time.time() < deadline:
                try:
                    body = json.loads(fetch(f"http://{address}/api/v1/query?"
                                            + urllib.parse.urlencode({"query": promql})))
                    result = body["data"]["result"]
                    if until(result):
                        return result
                except OSError:
                    pass  # not listening yet
                time.sleep(0.5)
            log = (tmp_path / "prometheus.log").read_text()
            raise AssertionError(f"{promql}: {result} after {timeout} s; log:\n{log}")
        return query

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


@needs_prometheus
def test_prometheus_scrapes_the_rewards_and_evaluation_of_a_local_training_run(tmp_path, tiny, prometheus):
    config = tiny("metrics.port=0", "train.eval_at_start=false")
    loop = trainer(config, str(tmp_path / "run"), log=lambda line: None)
    try:
        query = prometheus(shipped_config(tmp_path, loop.metrics.url.split("/")[2], tmp_path / "no-ray.json"))
        loop.fit()
        last = loop.run.metrics[-1]
        want = {name[len("reward/"):]: value for name, value in last.items() if name.startswith("reward/")}
        got = query('cogrpo_reward_mean{job="cogrpo-driver"}',
                    lambda r: {s["metric"]["reward"]: float(s["value"][1]) for s in r} == want)
        assert len(got) == 2  # shapes_strict and shapes_partial
        schedule = query("cogrpo_schedule", lambda r: len(r) == len(KNOBS) * config.sampler.steps)
        assert {s["metric"]["knob"] for s in schedule} == set(KNOBS)
        final = loop.run.evals[-1]
        want = {name[len("reward/"):]: value for name, value in final.items() if name.startswith("reward/")}
        query('cogrpo_eval_reward{job="cogrpo-driver", split="heldout"}',
              lambda r: {s["metric"]["reward"]: float(s["value"][1]) for s in r} == want)
        query('cogrpo_eval_score{job="cogrpo-driver"}',
              lambda r: [float(s["value"][1]) for s in r] == [final["overall"]])
    finally:
        loop.close()


@needs_prometheus
def test_ray_export_reaches_prometheus_under_the_same_names(tmp_path, prometheus, monkeypatch):
    """Ray's metrics agent serves `ray_cogrpo_*`; through the shipped config's relabelling they are `cogrpo_*`.
    The service-discovery file is written here in Ray's format (an embedded cluster without the dashboard writes
    none)."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_metrics_report_interval_ms", "500")
    agent_port = free_port()
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.2", _metrics_export_port=agent_port,
             object_store_memory=80 * 2**20, log_to_driver=False)
    try:
        sd_file = tmp_path / "sd.json"
        sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.2:{agent_port}"]}]))
        query = prometheus(shipped_config(tmp_path, f"127.0.0.1:{free_port()}", sd_file))
        sink = MetricsSink(MetricsConfig(), ray_export=True)
        sink.record(ROW)
        got = query('cogrpo_reward_mean{job="ray"}', lambda r: len(r) == 1)
        assert got[0]["metric"]["reward"] == "shapes_strict" and float(got[0]["value"][1]) == 0.25
        query('cogrpo_images_generated_total{job="ray"}', lambda r: len(r) == 1 and float(r[0]["value"][1]) == 16)
        query('cogrpo_weight_sync_seconds_count{job="ray"}', lambda r: len(r) == 1)
        time.sleep(3)  # past the agent's 2 s drop time for gauges not set again (2 export intervals of 0.5 -> 1 s)
        assert query('cogrpo_reward_mean{job="ray"}', lambda r: len(r) == 1, timeout=1)
        sink.close()
    finally:
        ray.shutdown()


def test_the_compose_file_mounts_files_that_exist():
    compose = yaml.safe_load((DOCKER / "monitoring.compose.yaml").read_text())
    sources = [v.split(":")[0] for s in compose["services"].values() for v in s["volumes"]]
    assert [s for s in sources if s.startswith("./") and not (DOCKER / s).exists()] == []
