"""Past one machine: the exact commands that serve a model on several GPUs and several nodes, with vLLM.

One server process on one GPU is where this stage runs. Growing past it is configuration, not new
code, because vLLM already is a distributed engine:

- **Several GPUs in one machine**: `--tensor-parallel-size N` splits every layer across N GPUs (each
  holds 1/N of the weights and of the K/V heads; the GPUs exchange activations twice per layer, so
  they want a fast link such as NVLink). vLLM starts one worker process per GPU itself.
- **Several machines**: `--pipeline-parallel-size M` gives each machine a slice of the layers (only
  one activation crosses between machines per layer slice, so an ordinary network will do), and the
  workers run on a **Ray cluster**: `ray start --head` on one node, `ray start --address=HEAD:6379` on
  the others, then `vllm serve ... --distributed-executor-backend ray` on the head. The usual rule:
  TP = GPUs per node, PP = number of nodes.
- **More users than one replica serves**: more replicas of the whole thing, behind a load balancer.
  Each replica has its own KV cache, so a router that sends requests sharing a prefix (the same
  system prompt, the same conversation) to the same replica keeps its prefix cache warm:
  prefix-aware (or session-affine) routing, what vLLM's production stack and llm-d provide.

This module only writes the commands (`serve --dry-run`); the planner (plan.py) says which layout a
model needs. On a GPU machine the `vllm` package's `vllm serve` runs them as printed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from shared.console import BadInput

BACKENDS = ("mp", "ray")
RAY_PORT = 6379


@dataclass(frozen=True)
class Deployment:
    model: str  # what `vllm serve` loads: a hub id or a path on every node
    served_name: str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "mp"
    gpus_per_node: int = 8
    host: str = "0.0.0.0"
    port: int = 8000
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise BadInput(
                f"parallel sizes must be >= 1, got TP {self.tensor_parallel_size}, PP {self.pipeline_parallel_size}"
            )
        if self.distributed_executor_backend not in BACKENDS:
            raise BadInput(
                f"--distributed-executor-backend must be mp or ray, got {self.distributed_executor_backend!r}"
            )
        if self.tensor_parallel_size > self.gpus_per_node:
            raise BadInput(f"tensor parallel size {self.tensor_parallel_size} exceeds the {self.gpus_per_node} GPUs of "
                           "a node; keep TP inside a node and add pipeline stages")  # fmt: skip
        if self.nodes > 1 and self.distributed_executor_backend != "ray":
            raise BadInput(f"{self.devices} GPUs need {self.nodes} nodes, and vLLM runs across nodes only on Ray: "
                           "add --distributed-executor-backend ray")  # fmt: skip

    @property
    def devices(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def nodes(self) -> int:
        return -(-self.devices // self.gpus_per_node)


def serve_command(d: Deployment) -> list[str]:
    args = ["vllm", "serve", d.model, "--served-model-name", d.served_name, "--host", d.host, "--port", str(d.port),
            "--tensor-parallel-size", str(d.tensor_parallel_size),
            "--pipeline-parallel-size", str(d.pipeline_parallel_size)]  # fmt: skip
    if d.distributed_executor_backend == "ray" or d.nodes > 1:
        args += ["--distributed-executor-backend", "ray"]
    if d.max_model_len:
        args += ["--max-model-len", str(d.max_model_len)]
    return args


def commands(d: Deployment) -> list[str]:
    """The shell lines, with comments saying where each runs. The API key is read from VLLM_API_KEY."""
    serve = "VLLM_API_KEY=$VLLM_API_KEY " + shlex.join(serve_command(d))
    if d.distributed_executor_backend == "mp":
        return [f"# one node, {d.devices} GPU(s): vLLM starts a worker per GPU itself", serve]
    lines = [f"# a Ray cluster of {d.nodes} node(s), {d.devices} GPU(s): TP {d.tensor_parallel_size} inside a node, "
             f"PP {d.pipeline_parallel_size} across"]  # fmt: skip
    lines += ["# on the head node:", f"ray start --head --port={RAY_PORT}"]
    if d.nodes > 1:
        lines += [f"# on each of the other {d.nodes - 1} node(s) (the same model files and environment on each):",
                  f"ray start --address=HEAD_NODE_IP:{RAY_PORT}"]  # fmt: skip
    lines += ["# then, on the head node, once `ray status` shows every GPU:", serve]
    return lines
