"""The component contract is the one source of the stream's state: a state tensor added to the
contract and the model (here, in the test, not in the product) is exported, built, initialised,
streamed, snapshotted and restored with nothing else touched."""

import numpy as np

from mirasol_edge.assets import SAMPLE_CLIP
from mirasol_edge.runtime import components
from mirasol_edge.runtime.decode.chunks import chunks
from mirasol_edge.runtime.stream import MirasolStream
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.model import Mirasol
from mirasol_edge.toolkit.recipe import load_recipe


def test_a_state_tensor_added_to_the_contract_travels_everywhere(tmp_path, tiny_checkpoint, monkeypatch):
    contract_state = components.state_shapes
    model_step = Mirasol.ar_step

    def with_counter(cfg, batch=1):  # the contract: a state tensor the AR step carries
        return {**contract_state(cfg, batch), "counter": ((batch, 3), "float32")}

    def counting_step(self, latents, memory, state):  # the model: it counts the chunks it has seen
        out, new_state = model_step(self, latents, memory, state)
        return out, {**new_state, "counter": state["counter"] + 1.0}

    monkeypatch.setattr(components, "state_shapes", with_counter)
    monkeypatch.setattr(Mirasol, "ar_step", counting_step)

    out = tmp_path / "engines"
    manifest = build(load_recipe("cpu"), out, checkpoint=tiny_checkpoint)
    ar_inputs = [t["name"] for t in manifest["components"]["ar_step"]["inputs"]]
    ar_outputs = [t["name"] for t in manifest["components"]["ar_step"]["outputs"]]
    assert "past.counter" in ar_inputs and "present.counter" in ar_outputs
    assert "counter" in manifest["state"]["tensors"]

    with MirasolStream.open(out) as stream:
        assert np.array_equal(stream.state()["counter"], np.zeros((1, 3), np.float32))  # the initial state
        pushed = 0
        for chunk in chunks(SAMPLE_CLIP, stream.spec):
            stream.push(chunk)
            pushed += 1
        assert pushed == 6
        assert np.array_equal(stream.state()["counter"], np.full((1, 3), 6.0, np.float32))
        answer = stream.ask("what colour is the square?").text
        stream.snapshot(tmp_path / "cam.state")
    with MirasolStream.restore(tmp_path / "cam.state") as restored:
        assert np.array_equal(restored.state()["counter"], np.full((1, 3), 6.0, np.float32))
        assert restored.ask("what colour is the square?").text == answer
