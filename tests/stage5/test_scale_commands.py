"""race, plan and serve's multi-device path: the commands around the engines and the planner."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import pytest

from shared.console import run_cli
from stage5_serving_ops.cli import main
from stage5_serving_ops.race import race, write_report


@pytest.mark.server
def test_the_race_runs_every_workload_and_reports_ratios_and_targets(tiny_dir, tmp_path):
    """The race's bookkeeping on the tiny model, the hand-written engine standing in for vLLM too."""
    from stage5_serving_ops.launch import running_server
    from stage5_serving_ops.server import ServerConfig

    base = ServerConfig(model=str(tiny_dir), port=0, engine="scratch", max_model_len=512,
                        extra_args=["--kv-cache-gib", "0.02", "--threads", "1"])  # fmt: skip
    started = []

    @contextmanager
    def start(engine, options):
        started.append((engine, options))
        with running_server(
            replace(base, port=0, log_file=str(tmp_path / f"{len(started)}.log"), **options)
        ) as s:
            yield s

    report = race(start, [1, 2], requests=2, max_tokens=4)
    assert started[:4] == [("vllm", {}), ("scratch", {}), ("scratch", {"prefix_caching": False}),
                           ("scratch", {"speculative_tokens": 4})]  # fmt: skip
    assert [options.get("dtype") for _, options in started[4:]] == ["float32", "float32"]
    assert [lv["concurrency"] for lv in report["levels"]["scratch"]] == [1, 2]
    assert all(lv["errors"] == 0 for rows in report["levels"].values() for lv in rows)
    assert set(report["prefix_caching"]) == {"vllm_on", "scratch_on", "scratch_off"}
    copy = report["speculative"]["copy"]
    assert copy["replies"] > 0 and 0.0 <= copy["acceptance_rate"] <= 1.0
    exact = report["speculative_float32"]
    assert all(v["identical_replies"] == v["replies"] > 0 for v in exact.values()), (
        "float32: speculation changes nothing"
    )
    assert set(report["ratios"]) >= {"scratch_2_vs_1", "scratch_vs_vllm_at_2", "prefix_ttft_speedup"}
    assert len(report["targets"]) == 4
    json_path, png = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["ratios"] == report["ratios"] and png.stat().st_size > 10_000


@pytest.mark.server
def test_dtypes_serves_each_dtype_in_turn_and_times_prefill_and_decoding(tiny_dir, tmp_path, capsys):
    """The `dtypes` command on the hand-written engine and the tiny model: a server per dtype, the probe's
    figures, the ratio, and the README section rendered from the report."""
    from stage5_serving_ops.figures import dtypes

    argv = ["dtypes", "--engine", "scratch", "--model", str(tiny_dir), "--kv-cache-gib", "1", "--repeats", "1",
            "--out", str(tmp_path), "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "stage5_dtypes.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert list(report["dtypes"]) == ["bfloat16", "float32"] and report["auto"] in ("bfloat16", "float32")
    for name, row in report["dtypes"].items():
        assert row["prompt_tokens"] > 400, "a long prompt: the prefill is what is timed"
        assert row["served_as"] == name, "the engine computed in the dtype asked for"
        assert row["prefill_s"] > 0 and row["decode_tokens_per_s"] > 0
    assert report["bfloat16_over_float32"]["prefill_time"] > 0
    assert "| float32 |" in dtypes(report) and "prefill takes" in dtypes(report)
    assert run_cli(main, ["dtypes", "--dtypes", "float16"]) == 2


@pytest.mark.exercise("stage5.kv_capacity")
def test_plan_finds_the_smallest_layout_and_prints_json(capsys):
    config = "stage5_serving_ops/data/configs/llama-3.1-70b.json"
    assert (
        main(
            ["plan", "--config", config, "--memory-gib", "80", "--context", "8192", "--users", "16", "--json"]
        )
        == 0
    )
    layout = json.loads(capsys.readouterr().out)
    assert (layout["tensor_parallel_size"], layout["pipeline_parallel_size"]) == (4, 1)
    assert layout["concurrent_sequences"] >= 16
    assert main(["plan", "--kv-cache-gib", "2", "--block-size", "128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_cache_tokens"] == 93_184


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "--memory-gib", "80", "--kv-cache-gib", "2"], "give exactly one of"),
        (["plan", "--users", "4"], "--users needs --memory-gib and --context"),
        (["serve", "--tensor-parallel-size", "2"], "needs 2 GPUs and this machine has"),
        (["serve", "--engine", "scratch", "--tensor-parallel-size", "2", "--dry-run"], "need --engine vllm"),
        (["serve", "--tensor-parallel-size", "16", "--dry-run"], "exceeds the 8 GPUs of a node"),
    ],
)
def test_bad_plans_and_layouts_exit_2_with_one_line(argv, message, capsys):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_dry_run_prints_the_ray_cluster_commands(capsys):
    argv = ["serve", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--tensor-parallel-size", "8",
            "--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray", "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ray start --head" in out and "ray start --address=HEAD_NODE_IP:6379" in out
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray" in out


def test_cpu_settings_give_the_model_every_core_and_reach_the_server_environment():
    from stage5_serving_ops.bench import cpu_settings
    from stage5_serving_ops.server import ServerConfig, environment

    settings = cpu_settings([0, 1])
    assert settings["default"] == ({}, [])
    env, args = settings["all-cores+batch"]
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0,1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert args[args.index("--max-num-seqs") + 1] == "16"
    served = environment(ServerConfig(port=0, extra_env=env), gpu=False, base={})
    assert served["VLLM_CPU_OMP_THREADS_BIND"] == "0,1" and served["VLLM_CPU_KVCACHE_SPACE"] == "2"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--settings", "turbo"], "unknown --settings turbo"),
        (["bench", "--settings", "all-cores", "--base-url", "http://127.0.0.1:9/v1"], "drop --base-url"),
        (["bench", "--settings", "all-cores", "--engine", "scratch"], "use them with --engine vllm"),
    ],
)
def test_bad_bench_settings_exit_2(argv, message, capsys):
    from shared.console import run_cli

    assert run_cli(main, argv) == 2 and message in capsys.readouterr().err


def test_the_readme_renders_the_settings_sweep_and_the_race():
    from stage5_serving_ops.figures import load, race

    level = {"concurrency": 1, "output_tokens_per_s": 10.0, "requests_per_s": 0.2, "ttft_p50_s": 0.1, "ttft_p95_s": 0.2,
             "itl_p50_s": 0.05, "itl_p95_s": 0.06, "e2e_p50_s": 3.0, "e2e_p95_s": 3.5, "errors": 0}  # fmt: skip
    fast = {**level, "concurrency": 16, "output_tokens_per_s": 40.0}
    settings = {"default": {"levels": [level, fast], "environment": {}, "arguments": []},
                "all-cores": {"levels": [level, {**fast, "output_tokens_per_s": 60.0}],
                              "environment": {"VLLM_CPU_OMP_THREADS_BIND": "0,1"}, "arguments": []}}  # fmt: skip
    text = load({"device": "cpu", "requests": 8, "max_tokens": 64, "levels": [level, fast], "settings": settings,
                 "best_setting": "all-cores", "baseline": {"output_tokens_per_s": 10.0, "e2e_p50_s": 3, "e2e_p95_s": 4}})  # fmt: skip
    assert "16 users get 4.00x the tokens/s of 1 user" in text and "6.00x one-by-one Transformers" in text
    assert "**all-cores**" in text and "VLLM_CPU_OMP_THREADS_BIND=0,1" in text
    rows = {"vllm": [level, fast], "scratch": [level, {**fast, "output_tokens_per_s": 20.0}]}
    prefix = {k: {"ttft_p50_s": 0.5} for k in ("vllm_on", "scratch_on", "scratch_off")}
    spec = {"plain_tokens_per_s": 10.0, "spec_tokens_per_s": 12.0, "speedup": 1.2, "acceptance_rate": 0.3,
            "identical_replies": 8, "replies": 8}  # fmt: skip
    text = race({"levels": rows, "requests": 8, "max_tokens": 64, "prefix_caching": prefix,
                 "speculative": {"copy": spec}, "speculative_float32": {"copy": {"identical_replies": 8, "replies": 8}},
                 "ratios": {"prefix_ttft_speedup": 1.0}, "targets": {"t": True}})  # fmt: skip
    assert "| 16 | 40.0 | 20.0 | 0.50x |" in text and "8 of 8 copy" in text and "t: met" in text


def test_the_readme_renders_the_gate_table_with_failures_in_bold():
    from stage5_serving_ops.figures import gate

    precision, relevancy = "non_llm_context_precision_with_reference", "answer_relevancy"
    paired = {"mean": -0.18, "standard_error": 0.05, "n": 60}

    def run(expected, failed, value):
        return {"what": f"{expected} run", "expected": expected, "result": {"metrics": {precision: value, relevancy: 0.4}},
                "gate": {"passed": not failed, "failures": [{"metric": precision}] if failed else []},
                "paired": {precision: paired, relevancy: {**paired, "mean": 0.01}}}  # fmt: skip

    report = {"n": 60, "split": "test", "model": {"label": "smollm2"}, "metrics": [precision, relevancy],
              "thresholds": {"metrics": {precision: {"min": 0.78}, relevancy: {"min": None}}, "baseline": {"records": 60}},
              "not_gated": {relevancy: "judge agreement 0.45 is below the bar 0.80"},
              "judge": {"calls": 120, "replies": 120, "parsed": 120, "parse_rate": 1.0},
              "runs": {"default": run("pass", False, 0.85), "bm25-only": run("fail", True, 0.67),
                       "fixed-chunks": run("fail", False, 0.84)}}  # fmt: skip
    text = gate(report)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("|")}
    assert "| 0.850 | 0.400 | pass |" in rows["default"], "the default row has no paired difference"
    assert "**0.670 (-0.180 ± 0.050)**" in rows["bm25-only"] and rows["bm25-only"].endswith("| **fails** |")
    assert rows["fixed-chunks"].endswith("| pass |") and "0.840 (-0.180 ± 0.050)" in rows["fixed-chunks"]
    assert "| 0.78 | not gated |" in rows["*floor*"]
    assert "Regressions caught: **1 of 2** (bm25-only); the default pipeline passes." in text
    assert "100% of its replies parsed" in text and "answer relevancy is reported, not gated" in text
