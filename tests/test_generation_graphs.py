"""The decoder's CUDA-graph path on the CPU, through a stand-in for `torch.cuda.CUDAGraph`.

`RecordedGraph` records the aten ops of one decode step (after the decoder's warm-up steps, as a capture
does) and replays them on the very tensors they were recorded on, writing each op's fresh result into the
tensor the recording produced, as a graph replays into its fixed memory. Whatever the step decided on the
host (a Python int standing for the position, a shape that depends on the length, a read of a device value)
is frozen into the recording, as in a real graph, so a decoder that replays it must still produce the tokens
of eager decoding. The recording also refuses what a capture refuses: reads of device values (`.item()`,
`.tolist()`, `nonzero`) and tensors made from host data.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from hybridlm.model import decoder as decoder_module
from hybridlm.model.conversation import Conversation
from hybridlm.model.decoder import Decoder
from hybridlm.model.sampling import Sampling
from test_generation import full_forward_greedy, prompts_of, small_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

REFUSED = ("aten._local_scalar_dense", "aten.nonzero", "aten.lift_fresh", "aten.masked_select", "aten.unique")


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        assert not name.startswith(REFUSED), f"a CUDA graph capture cannot run {func}"
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class RecordedGraph:
    """Replay = run every recorded op again on the recorded tensors; results that are new tensors are
    written into the recorded outputs (views and in-place results already alias them)."""

    replays = 0

    def __init__(self, step):
        recorder = _Recorder()
        with recorder:
            step()
        self.ops = recorder.ops

    def replay(self) -> None:
        RecordedGraph.replays += 1
        for func, args, kwargs, recorded in self.ops:
            fresh = func(*args, **kwargs)
            inputs = {_storage(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
            for old, new in zip(tree_flatten(recorded)[0], tree_flatten(fresh)[0]):
                if isinstance(old, torch.Tensor) and _storage(new) not in inputs:
                    old.copy_(new)


def emulate_graphs(monkeypatch, decoder: Decoder) -> Decoder:
    """Let `decoder` take its graph path on the CPU, capturing with RecordedGraph."""
    def record(self, step, generator):
        for _ in range(decoder_module.WARMUP_STEPS):
            step()
        return RecordedGraph(step)

    monkeypatch.setattr(Decoder, "record", record)
    decoder.cuda_graphs = True
    return decoder


def op_trace(decoder: Decoder, slot) -> list[tuple]:
    recorder = _Recorder()
    with torch.no_grad(), recorder:
        decoder.device_step(slot)
    shapes = (lambda x: tuple(x.shape) if isinstance(x, torch.Tensor) else x)
    return [(str(func), tree_map(shapes, args), tree_map(shapes, kwargs)) for func, args, kwargs, _ in recorder.ops]


@pytest.mark.parametrize("layout, window", [("GAG", None), ("GAG", 6), ("AAA", 6), ("GG", None)])
def test_a_step_is_the_same_ops_on_the_same_shapes_at_every_position(layout, window):
    model = small_model(layout, window)
    decoder = Decoder(model)
    run = decoder.start(prompts_of((5, 3)), 20, Sampling(temperature=0.9, top_k=10, repetition_penalty=1.1),
                        eos_token_id=3, seed=0)
    traces = [op_trace(decoder, run.slot) for _ in range(8)]  # positions 5 .. 12: the window-6 ring wraps
    assert all(trace == traces[0] for trace in traces)
    pointers = [t.data_ptr() for t in run.slot.tensors()]
    decoder.step(run.slot)
    assert [t.data_ptr() for t in run.slot.tensors()] == pointers


SETTINGS = [
    pytest.param(Sampling(temperature=0), None, id="greedy"),
    pytest.param(Sampling(temperature=1.0, top_k=20, top_p=0.9), None, id="sampled"),
    pytest.param(Sampling(temperature=0, repetition_penalty=2.0), 5, id="penalty-eos"),
]


@pytest.mark.parametrize("sampling, eos", SETTINGS)
@pytest.mark.parametrize("layout, window", [("GAG", None), ("AGA", 6), ("GGG", None)])
def test_replayed_graphs_decode_what_eager_steps_decode(monkeypatch, layout, window, sampling, eos):
    """Three prompts in a bucket of 4 rows, 14 tokens, twice through the same captured graph."""
    model = small_model(layout, window)
    prompts = prompts_of((9, 2, 6))
    eager = Decoder(model, buckets=(4,)).generate(prompts, 14, sampling, eos_token_id=eos, seed=11)
    graphed = emulate_graphs(monkeypatch, Decoder(model, buckets=(4,)))
    before = RecordedGraph.replays
    first = graphed.generate(prompts, 14, sampling, eos_token_id=eos, seed=11)
    second = graphed.generate(prompts, 14, sampling, eos_token_id=eos, seed=11)
    assert RecordedGraph.replays > before and len(graphed._slots) == 1
    assert torch.equal(first, eager) and torch.equal(second, eager)


def test_conversation_recaptures_on_its_live_state_when_the_buffer_grows(monkeypatch):
    model = small_model("GAG")
    decoder = emulate_graphs(monkeypatch, Decoder(model))
    conversation = Conversation(decoder, Sampling(temperature=0), max_new_tokens=12)
    history: list[int] = []
    versions = []
    for turn in prompts_of((4, 250, 2)):
        reply = list(conversation.reply(turn))
        assert reply == full_forward_greedy(model, history + turn, len(reply))
        history += turn + reply
        versions.append(conversation.slot.graph_version)
    assert versions[0] == 0 and versions[-1] == 1  # captured again after the buffer doubled
