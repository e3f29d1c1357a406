"""A serving engine by hand: what vLLM does inside, built on stage 1's hand-written SmolLM2.

vLLM's speed comes from four ideas; each is one file here, named with vLLM's own vocabulary so
that its code and logs read familiar afterwards:

    block_pool.py      the KV cache manager: a pool of fixed-size blocks, a block table per
                       sequence, reference counts, and prefix caching (full blocks keyed by a hash
                       of their tokens and everything before them), with LRU eviction
    paged_attention.py where keys and values live (one flat tensor of slots per layer) and
                       attention that reads them through each sequence's block table
    runner.py          the model runner: one forward pass over a packed batch of prefill chunks and
                       decode tokens from many sequences, with stage 1's layers
    scheduler.py       continuous batching: each step admits waiting requests, schedules every
                       running sequence's next token(s), and preempts (to recompute later) when
                       blocks run out
    spec_decode.py     speculative decoding, greedy: a cheap n-gram draft from the sequence's own
                       text (prompt lookup), verified by the full model in one forward pass
    llm_engine.py      the engine: requests in, one `step()` at a time, tokens out; its counters
    api_server.py      an OpenAI-compatible HTTP server around it (/v1/models, /v1/completions,
                       /v1/chat/completions, streaming), the same API as vLLM's

Every request's greedy output equals the same prompt decoded alone by stage 1's loop; the tests
check it under concurrency, with prefix caching on and off, with preemption forced by a tiny
pool, and with speculative decoding on and off.

    python -m stage5_serving_ops serve --engine scratch
"""
