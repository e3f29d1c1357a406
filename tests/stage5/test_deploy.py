"""deploy.py: the commands printed for serving past one GPU and one machine."""

from __future__ import annotations

import shlex

import pytest

from shared.console import BadInput
from stage5_serving_ops.deploy import Deployment, commands


def test_one_node_several_gpus_is_one_command():
    lines = commands(Deployment("meta-llama/Llama-3.1-70B", "llama-70b", tensor_parallel_size=4))
    serve = shlex.split(lines[-1].split(" ", 1)[1])
    assert serve[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-70B"] and len(lines) == 2
    assert (
        serve[serve.index("--tensor-parallel-size") + 1] == "4"
        and "--distributed-executor-backend" not in serve
    )
    assert lines[-1].startswith("VLLM_API_KEY=$VLLM_API_KEY "), "the key travels in the environment"


def test_two_nodes_run_on_a_ray_cluster():
    d = Deployment("meta-llama/Llama-3.1-70B", "llama-70b", tensor_parallel_size=8, pipeline_parallel_size=2,
                   distributed_executor_backend="ray")  # fmt: skip
    lines = commands(d)
    assert d.nodes == 2 and "ray start --head --port=6379" in lines
    assert "ray start --address=HEAD_NODE_IP:6379" in lines
    serve = shlex.split(lines[-1].split(" ", 1)[1])
    assert serve[serve.index("--pipeline-parallel-size") + 1] == "2"
    assert serve[serve.index("--distributed-executor-backend") + 1] == "ray"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tensor_parallel_size": 16}, "exceeds the 8 GPUs of a node"),
        ({"tensor_parallel_size": 8, "pipeline_parallel_size": 2}, "add --distributed-executor-backend ray"),
        ({"distributed_executor_backend": "slurm"}, "must be mp or ray"),
        ({"pipeline_parallel_size": 0}, "parallel sizes must be >= 1"),
    ],
)
def test_impossible_layouts_are_refused(kwargs, message):
    with pytest.raises(BadInput, match=message):
        Deployment("m", "m", **kwargs)
