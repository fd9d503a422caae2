"""Batched decoding, one layer at a time: the block arithmetic against Petals' own path, and the pool's grouping.

The swarm-level tests (real servers, real clients) are in ``test_batching_swarm.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import poll_until

from backend.compat import import_petals

import_petals()

from petals.data_structures import InferenceMetadata  # noqa: E402
from petals.models.llama.block import WrappedLlamaBlock  # noqa: E402
from petals.server.backend import TransformerBackend  # noqa: E402
from petals.utils.misc import DUMMY_INT64  # noqa: E402
from transformers import LlamaConfig  # noqa: E402

from backend.swarm import batched_llama, batching  # noqa: E402
from backend.swarm.batching_pool import (  # noqa: E402
    BatchedStep,
    BatchingTaskPool,
    Group,
    decode_key,
    step_key,
)

HIDDEN, HEADS, KV_HEADS, MAX_LEN = 64, 4, 2, 32


def make_block(dtype: torch.dtype) -> WrappedLlamaBlock:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=128, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_LEN)
    block = WrappedLlamaBlock(config).to(dtype).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    return block


def make_cache(rows: int, prefix: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A Petals cache for one session and one block, its first ``prefix`` positions filled."""
    head_dim = HIDDEN // HEADS
    keys = torch.zeros(rows, KV_HEADS, head_dim, MAX_LEN, dtype=dtype)
    values = torch.zeros(rows, KV_HEADS, MAX_LEN, head_dim, dtype=dtype)
    keys[..., :prefix] = torch.randn(rows, KV_HEADS, head_dim, prefix).to(dtype)
    values[:, :, :prefix] = torch.randn(rows, KV_HEADS, prefix, head_dim).to(dtype)
    return keys, values


def stock_step(block, hidden, cache, prefix):
    """What ``TransformerBackend.inference_step`` does for one session and one block (cache updated in place)."""
    fake_backend = SimpleNamespace(module=SimpleNamespace(module_shards=[block]))
    layer_past = TransformerBackend._select_layer_past(fake_backend, list(cache), prefix)
    with torch.inference_mode():
        out, new_kvs = block.forward(hidden, layer_past=layer_past, use_cache=True)
    TransformerBackend._update_cache_inplace(None, list(cache), new_kvs, prefix)
    return out


BUCKETINGS = {
    "default": batched_llama.length_buckets,
    "each alone": lambda lengths: [[i] for i in range(len(lengths))],
    "all padded together": lambda lengths: [list(range(len(lengths)))],
}


@pytest.mark.parametrize("bucketing", BUCKETINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_block_matches_petals_path(dtype, bucketing, monkeypatch):
    """Sessions of different lengths and row counts in one forward give what each gets alone on Petals' path,
    whether their attention runs straight over each cache or padded together."""
    monkeypatch.setattr(batched_llama, "length_buckets", BUCKETINGS[bucketing])
    block = make_block(dtype)
    shapes = [(1, 0), (1, 5), (2, 17), (1, 30)]  # (rows, prefix length)
    hiddens = [torch.randn(rows, 1, HIDDEN).to(dtype) for rows, _ in shapes]
    caches = [make_cache(rows, prefix, dtype) for rows, prefix in shapes]
    stock_caches = [tuple(t.clone() for t in c) for c in caches]

    expected = [stock_step(block, h, c, p) for h, c, (_, p) in zip(hiddens, stock_caches, shapes, strict=True)]
    sessions = [batched_llama.SessionStep(h, p, [c]) for h, c, (_, p) in zip(hiddens, caches, shapes, strict=True)]
    hidden = torch.cat(hiddens)
    plan = batched_llama.plan_step(block, sessions, hidden)
    got = batched_llama.decode_block(block, hidden, plan, 0).split([r for r, _ in shapes])

    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for out, ref, cache, ref_cache, (_, p) in zip(got, expected, caches, stock_caches, shapes, strict=True):
        torch.testing.assert_close(out, ref, **tol)
        torch.testing.assert_close(cache[0][..., :p + 1], ref_cache[0][..., :p + 1], **tol)
        torch.testing.assert_close(cache[1][:, :, :p + 1], ref_cache[1][:, :, :p + 1], **tol)
        assert not cache[0][..., p + 1:].any(), "a step wrote past its own position"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefills_and_decode_steps_in_one_forward_match_petals_path(dtype):
    """Sessions adding several tokens (prefills, from an empty or a filled cache, one or two rows) and sessions
    adding one, in one forward, give what each gets alone on Petals' path, caches included."""
    block = make_block(dtype)
    shapes = [(1, 1, 5), (1, 7, 0), (2, 3, 4), (1, 1, 20), (1, 12, 10)]  # (rows, new tokens, prefix length)
    hiddens = [torch.randn(rows, tokens, HIDDEN).to(dtype) for rows, tokens, _ in shapes]
    caches = [make_cache(rows, prefix, dtype) for rows, _, prefix in shapes]
    stock_caches = [tuple(t.clone() for t in c) for c in caches]

    expected = [stock_step(block, h, c, p) for h, c, (_, _, p) in zip(hiddens, stock_caches, shapes, strict=True)]
    sessions = [batched_llama.SessionStep(h, p, [c]) for h, c, (*_, p) in zip(hiddens, caches, shapes, strict=True)]
    hidden = torch.cat([h.reshape(-1, 1, HIDDEN) for h in hiddens])
    plan = batched_llama.plan_step(block, sessions, hidden)
    got = batched_llama.decode_block(block, hidden, plan, 0).split([r * t for r, t, _ in shapes])

    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for out, ref, cache, ref_cache, (rows, tokens, p) in zip(got, expected, caches, stock_caches, shapes,
                                                             strict=True):
        torch.testing.assert_close(out.reshape(rows, tokens, HIDDEN), ref, **tol)
        torch.testing.assert_close(cache[0][..., :p + tokens], ref_cache[0][..., :p + tokens], **tol)
        torch.testing.assert_close(cache[1][:, :, :p + tokens], ref_cache[1][:, :, :p + tokens], **tol)
        assert not cache[0][..., p + tokens:].any(), "a step wrote past its own positions"


def test_sessions_with_short_caches_attend_padded(monkeypatch):
    """A session whose cache is shorter than the longest one in its bucket is padded, not cut past its end."""
    monkeypatch.setattr(batched_llama, "length_buckets", BUCKETINGS["all padded together"])
    block = make_block(torch.float32)
    short = make_cache(1, 3, torch.float32)
    short = (short[0][..., :8].contiguous(), short[1][:, :, :8].contiguous())  # a session of max_length 8
    caches, prefixes = [short, make_cache(1, 20, torch.float32)], [3, 20]
    hiddens = [torch.randn(1, 1, HIDDEN) for _ in caches]
    expected = [stock_step(block, h, tuple(t.clone() for t in c), p)
                for h, c, p in zip(hiddens, caches, prefixes, strict=True)]
    sessions = [batched_llama.SessionStep(h, p, [c]) for h, c, p in zip(hiddens, caches, prefixes, strict=True)]
    hidden = torch.cat(hiddens)
    got = batched_llama.decode_block(block, hidden, batched_llama.plan_step(block, sessions, hidden), 0)
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_length_buckets_bound_padding_waste():
    assert batched_llama.length_buckets([10, 11, 12, 9]) == [[3, 0, 1, 2]]  # similar lengths: one padded call
    assert batched_llama.length_buckets([5, 1000, 6]) == [[0, 2], [1]]  # the long one alone, no huge copy
    groups = batched_llama.length_buckets([100] * 300)
    assert all(len(g) * 100 <= 16384 for g in groups) and sorted(sum(groups, [])) == list(range(300))


def test_supports_only_plain_llama_blocks():
    block = make_block(torch.float32)
    assert batched_llama.supports(SimpleNamespace(module=SimpleNamespace(module_shards=[block])))
    assert not batched_llama.supports(SimpleNamespace(module=SimpleNamespace(module_shards=[block, block])))
    assert not batched_llama.supports(SimpleNamespace(module=SimpleNamespace(module_shards=[torch.nn.Linear(2, 2)])))


def test_install_refuses_an_unknown_petals(monkeypatch):
    import petals

    monkeypatch.setattr(petals, "__version__", "2.3.0")
    with pytest.raises(batching.UnsupportedPetals, match="2.3.0"):
        batching.install()


def test_server_args_turn_prefetch_off_unless_given():
    assert batching.server_args(["m", "--num_blocks", "2"])[-2:] == ["--prefetch_batches", "0"]
    assert batching.server_args(["m", "--prefetch_batches", "2"]) == ["m", "--prefetch_batches", "2"]


# -- the pool ----------------------------------------------------------------------------------------------------

def step_args(uids=("b.0", "b.1"), tokens=1, prompts=None, hypo_ids=DUMMY_INT64):
    infos = tuple(InferenceMetadata(uid, 3, (1, 2), None) for uid in uids)
    return (torch.zeros(1, tokens, HIDDEN), hypo_ids, infos, *(prompts or [None] * len(uids)))


def test_step_keys_accept_only_plain_steps():
    assert decode_key(step_args()) is not None
    assert decode_key(step_args(tokens=5)) is None  # prefill: not a decode step...
    assert step_key(step_args(tokens=5)) == step_key(step_args())  # ...but it may share a group
    assert decode_key(step_args(hypo_ids=torch.tensor([0]))) is None  # beam reorder
    assert decode_key(step_args(prompts=[torch.zeros(1), None])) is None  # deep prompts
    assert decode_key(step_args()) != decode_key(step_args(uids=("x",)))
    assert step_key(step_args(hypo_ids=torch.tensor([0]))) is None


@pytest.fixture
def pool():
    pool = BatchingTaskPool(lambda *a: a, max_batch_size=8192, device=torch.device("cpu"), name="test_pool",
                            max_sessions=3, max_tokens=8)
    pool.start()
    yield pool
    pool.shutdown()
    pool.join(timeout=5)


def test_pool_groups_queued_steps_within_sessions_and_tokens_and_keeps_the_rest_in_order(pool):
    """Steps for the same blocks go together, decode steps and prefills alike, up to max_sessions (3) and
    max_tokens (8) new tokens; steps for other blocks wait, and every future gets its own step's output."""
    a, prefill, b, other, big, c, d = (pool.submit_task(*args) for args in (
        step_args(), step_args(tokens=4), step_args(), step_args(uids=("x.0",)), step_args(tokens=7), step_args(),
        step_args()))
    poll_until(lambda: pool._ordered_tasks.qsize() >= 7, 10, "tasks in the pool's queue", interval=0.005)

    uid, batch = pool.load_batch_to_runtime()
    assert len(batch) == 1 and isinstance(batch[0], Group)
    assert [t.uid for t in batch[0].tasks] == [a._uid, prefill._uid, b._uid]  # max_sessions=3
    delivered = {}
    for task in batch[0].tasks:  # the pool's copies of the futures: record what each is given
        task.future.set_result = lambda outputs, uid=task.uid: delivered.setdefault(uid, outputs)
    pool.send_outputs_from_runtime(uid, result_of([torch.full((1, n, HIDDEN), float(n)) for n in (1, 4, 1)]))
    assert [tuple(delivered[f._uid][0].shape) for f in (a, prefill, b)] == [(1, 1, HIDDEN), (1, 4, HIDDEN),
                                                                             (1, 1, HIDDEN)]
    assert delivered[prefill._uid][0].eq(4.0).all()

    loaded = [pool.load_batch_to_runtime()[1][0] for _ in range(3)]
    assert isinstance(loaded[0], torch.Tensor) and loaded[0].shape[1] == 1  # the other blocks' step, alone
    assert [t.uid for t in loaded[1].tasks] == [big._uid, c._uid]  # 7 + 1 tokens: d no longer fits
    assert isinstance(loaded[2], torch.Tensor)  # d
    assert pool.empty, "every submitted task's pipe token was consumed exactly once"


def test_one_failed_step_does_not_fail_its_batch_mates(pool):
    """If the group's forward fails, each step is rerun alone: only the faulty one gets an error."""
    def stock(hidden, hypo_ids, infos, *prompts):
        if infos[0].uid == "bad.0":
            raise KeyError("cache handle freed")
        return (hidden + 1,)

    step = BatchedStep(stock, backends={})  # no backends: the batched forward itself fails
    group_args = [step_args(), step_args(), step_args()]
    group_args[1] = (group_args[1][0], group_args[1][1],
                     tuple(InferenceMetadata("bad.0", 3, (1, 2), None) for _ in range(2)), None, None)
    result = step.run_group(SimpleNamespace(args=group_args, tasks=[None] * 3))
    assert isinstance(result.per_task[1], KeyError)
    assert torch.equal(result.per_task[0], torch.ones(1, 1, HIDDEN))
    assert torch.equal(result.per_task[2], torch.ones(1, 1, HIDDEN))


def test_a_lone_decode_step_takes_the_batched_path_and_falls_back_to_petals():
    """A lone decode step runs through the batched forward; if that fails, Petals' own step answers it."""
    calls = []

    def stock(hidden, *rest):
        calls.append(hidden.shape)
        return (hidden + 1,)

    step = BatchedStep(stock, backends={})
    forwarded = []
    step.forward = lambda group_args: forwarded.append(len(group_args)) or group_args[0][0] * 2
    (out,) = step(*step_args())
    assert forwarded == [1] and not calls and torch.equal(out, torch.zeros(1, 1, HIDDEN))
    step.forward = BatchedStep.forward.__get__(step)  # no backends: the batched forward fails
    (out,) = step(*step_args())
    assert calls == [torch.Size([1, 1, HIDDEN])] and torch.equal(out, torch.ones(1, 1, HIDDEN))


def result_of(outputs):
    from backend.swarm.batching_pool import GroupResult

    result = GroupResult((torch.cat([o.reshape(-1, 1, o.shape[-1]) for o in outputs]),))
    result.per_task = outputs
    return result


def test_few_bfloat16_rows_run_on_pytorch_kernels_and_match_petals_path():
    """A lone stream's bfloat16 step runs on PyTorch's own kernels (oneDNN stays on for more rows and for
    float32, and is back on afterwards), and still gives what Petals' path gives."""
    from backend.cpu_kernels import matmul_kernels

    seen = []
    for rows, dtype in ((1, torch.bfloat16), (2, torch.bfloat16), (3, torch.bfloat16), (1, torch.float32)):
        with matmul_kernels(rows, dtype):
            seen.append(torch.backends.mkldnn.enabled)
    assert seen == [False, False, True, True] and torch.backends.mkldnn.enabled

    block = make_block(torch.bfloat16)
    hidden = torch.randn(1, 1, HIDDEN).to(torch.bfloat16)
    cache = make_cache(1, 9, torch.bfloat16)
    expected = stock_step(block, hidden, tuple(t.clone() for t in cache), 9)
    plan = batched_llama.plan_step(block, [batched_llama.SessionStep(hidden, 9, [cache])], hidden)
    with matmul_kernels(1, torch.bfloat16):
        got = batched_llama.decode_block(block, hidden, plan, 0)
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
