"""The runtime around the stages: overlap, pipelining, sessions, streaming, concurrency, queue, cancel, timeout.

Every runtime result is compared with the eager reference (`static=False, overlap=False`): same tokens, latents
within fp32 tolerance (frames within one uint8 level from rounding)."""
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.engine.events import DenoiseStep, Done, FramesReady, TextToken
from foresight_engine.errors import InvalidInputError, QueueFull, RequestCancelled, RequestTimeout

SETTINGS = dict(num_inference_steps=2, max_new_tokens=5)


@pytest.fixture(scope="module")
def runtime(engine):
    return Engine(engine.model, max_queue_size=4)


@pytest.fixture(scope="module")
def reference(engine):
    return Engine(engine.model, overlap=False, static=False)


def assert_same(pred, ref):
    assert pred.token_ids == ref.token_ids and pred.text == ref.text
    torch.testing.assert_close(pred.world_latent, ref.world_latent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.video_latent, ref.video_latent, rtol=1e-5, atol=1e-5)
    assert pred.frames.shape == ref.frames.shape
    assert np.abs(pred.frames.astype(int) - ref.frames.astype(int)).max() <= 1


def _hooked_denoise(engine, monkeypatch, hook):
    """Run `hook(step)` inside the engine's denoising loop, before its own step callback."""
    original = engine.denoise

    def denoise(request, cond, mask, generator, on_step=None, **kwargs):
        def step(i, n):
            hook(i)
            on_step(i, n)
        return original(request, cond, mask, generator, step, **kwargs)
    monkeypatch.setattr(engine, "denoise", denoise)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_overlapped_static_runtime_equals_eager_reference(runtime, reference, image, guidance_scale):
    kwargs = dict(seed=4, guidance_scale=guidance_scale, **SETTINGS)
    pred = runtime.predict(image, "What happens next?", **kwargs)
    assert_same(pred, reference.predict(image, "What happens next?", **kwargs))
    spans = pred.timings.spans
    assert set(spans) == {"vision", "prefill", "adapter", "denoise", "vae", "text"}
    assert spans["vision"][1] <= spans["prefill"][0]
    assert spans["prefill"][1] <= min(spans["adapter"][0], spans["text"][0])
    assert spans["adapter"][1] <= spans["denoise"][0] <= spans["denoise"][1] <= spans["vae"][0]
    assert set(pred.timings.to_dict()) == {"vision", "prefill", "adapter", "denoise", "vae", "text", "total"}
    assert 0.0 <= pred.timings.overlap_fraction() <= 1.0


def test_sequential_static_and_overlapped_eager_equal_reference(engine, reference, image):
    ref = reference.predict(image, "What happens next?", seed=2, **SETTINGS)
    for variant in (Engine(engine.model, overlap=False), Engine(engine.model, static=False)):
        assert_same(variant.predict(image, "What happens next?", seed=2, **SETTINGS), ref)


def test_stream_events_in_order_and_equal_to_predict(runtime, image):
    events = list(runtime.stream(image, "What happens next?", seed=1, request_id="s1", **SETTINGS))
    pred = runtime.predict(image, "What happens next?", seed=1, **SETTINGS)
    assert isinstance(events[-1], Done) and events[-1].request_id == "s1"
    assert all(e.request_id == "s1" for e in events)
    tokens = [e for e in events if isinstance(e, TextToken)]
    steps = [e for e in events if isinstance(e, DenoiseStep)]
    frames = [i for i, e in enumerate(events) if isinstance(e, FramesReady)]
    assert [t.index for t in tokens] == list(range(len(pred.token_ids)))
    assert [t.token_id for t in tokens] == pred.token_ids
    assert "".join(t.text for t in tokens) == pred.text
    assert [(s.step, s.total) for s in steps] == [(1, 2), (2, 2)]
    assert len(frames) == 1 and frames[0] > max(i for i, e in enumerate(events) if isinstance(e, DenoiseStep))
    assert np.array_equal(events[frames[0]].frames, events[-1].prediction.frames)
    assert events[-1].prediction.token_ids == pred.token_ids
    np.testing.assert_allclose(events[-1].prediction.frames, pred.frames, atol=1)


def test_leaving_a_stream_early_cancels_the_request(runtime, image):
    events = runtime.stream(image, "What happens next?", request_id="early", num_inference_steps=8,
                            max_new_tokens=5)
    next(events)
    events.close()
    deadline = time.time() + 30
    while runtime.in_flight and time.time() < deadline:
        time.sleep(0.01)
    assert runtime.in_flight == 0 and not runtime.cancel("early")


def test_concurrent_predicts_equal_serial_results(runtime, image, other_image):
    jobs = [(image, "What happens next?", 1), (other_image, "Where does the red ball roll?", 2),
            (image, "Where does the red ball roll?", 3), (other_image, "What happens next?", 4)]
    serial = [runtime.predict(img, prompt, seed=seed, **SETTINGS) for img, prompt, seed in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        parallel = list(pool.map(lambda j: runtime.predict(j[0], j[1], seed=j[2], **SETTINGS), jobs))
    for a, b in zip(parallel, serial):
        assert_same(a, b)
    assert runtime.in_flight == 0


def test_queue_full_at_once_under_a_burst(engine, image, monkeypatch):
    small = Engine(engine.model, max_queue_size=2)
    release = threading.Event()
    _hooked_denoise(small, monkeypatch, lambda step: release.wait(30))
    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(small.predict, image, "What happens next?", **SETTINGS) for _ in range(2)]
        deadline = time.time() + 30
        while small.in_flight < 2 and time.time() < deadline:
            time.sleep(0.01)
        # both slots stay taken until `release` is set below, so this can only pass by refusing at once
        with pytest.raises(QueueFull, match="max_queue_size=2"):
            small.predict(image, "What happens next?", **SETTINGS)
        release.set()
        results = [f.result(timeout=60) for f in running]
    assert results[0].token_ids == results[1].token_ids
    assert small.in_flight == 0
    small.predict(image, "What happens next?", **SETTINGS)  # a slot is free again


def test_cancel_stops_at_next_step_skips_vae_and_next_request_is_unaffected(engine, reference, image, monkeypatch):
    rt = Engine(engine.model)
    answers = []
    _hooked_denoise(rt, monkeypatch, lambda step: answers.extend([rt.cancel("c1"), rt.cancel("c1")])
                    if step == 1 else None)
    decoded = []
    original_decode = rt.decode_video
    monkeypatch.setattr(rt, "decode_video", lambda *a: decoded.append(1) or original_decode(*a))
    with pytest.raises(RequestCancelled, match="c1"):
        rt.predict(image, "What happens next?", request_id="c1", num_inference_steps=4, max_new_tokens=5)
    assert answers == [True, True]  # idempotent while in flight
    assert decoded == []  # the VAE decode was skipped
    assert rt.in_flight == 0 and rt.cancel("c1") is False
    monkeypatch.undo()
    assert_same(rt.predict(image, "What happens next?", seed=2, **SETTINGS),
                reference.predict(image, "What happens next?", seed=2, **SETTINGS))


def test_timeout_is_checked_every_step(engine, image, monkeypatch):
    rt = Engine(engine.model)
    _hooked_denoise(rt, monkeypatch, lambda step: time.sleep(0.2))
    with pytest.raises(RequestTimeout, match="timeout_s=0.1"):
        rt.predict(image, "What happens next?", timeout_s=0.1, num_inference_steps=6, max_new_tokens=5)
    assert rt.in_flight == 0
    with pytest.raises(InvalidInputError, match="timeout_s"):
        rt.predict(image, "What happens next?", timeout_s=0, **SETTINGS)


def test_bad_input_and_duplicate_ids_raise_before_any_work(runtime, image, monkeypatch):
    with pytest.raises(InvalidInputError, match="num_frames=6"):
        runtime.stream(image, "What happens next?", num_frames=6)
    release = threading.Event()
    rt = Engine(runtime.model)
    _hooked_denoise(rt, monkeypatch, lambda step: release.wait(30))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rt.predict, image, "What happens next?", request_id="dup", **SETTINGS)
        while rt.in_flight < 1:
            time.sleep(0.01)
        with pytest.raises(InvalidInputError, match="dup"):
            rt.predict(image, "What happens next?", request_id="dup", **SETTINGS)
        release.set()
        first.result(timeout=60)


def test_async_variants(runtime, image):
    async def main():
        pred = await runtime.apredict(image, "What happens next?", seed=1, **SETTINGS)
        events = [e async for e in runtime.astream(image, "What happens next?", seed=1, **SETTINGS)]
        return pred, events
    pred, events = asyncio.run(main())
    assert isinstance(events[-1], Done)
    assert events[-1].prediction.token_ids == pred.token_ids
    assert [e.step for e in events if isinstance(e, DenoiseStep)] == [1, 2]


def test_session_second_step_equals_fresh_predict_over_whole_conversation(runtime, image, other_image,
                                                                          monkeypatch):
    session = runtime.session()
    first = session.predict(image, "What happens next?", seed=1, **SETTINGS)
    vision_calls, prefill_lengths = [], []
    original_vision, backbone = runtime.vision, runtime.model.backbone
    original_prefill = backbone.prefill
    monkeypatch.setattr(runtime, "vision", lambda req, first_image=0: vision_calls.append(first_image)
                        or original_vision(req, first_image))
    monkeypatch.setattr(backbone, "prefill", lambda embeds, *a: prefill_lengths.append(embeds.shape[1])
                        or original_prefill(embeds, *a))
    second = session.predict(other_image, "And then?", seed=1, **SETTINGS)
    monkeypatch.undo()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What happens next?"}]},
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And then?"}]}]
    fresh = runtime.predict([image, other_image], messages=messages, seed=1, **SETTINGS)
    request = runtime.prepare([image, other_image], messages=messages, **SETTINGS)
    assert vision_calls == [1]  # only the new image went through the vision tower
    assert prefill_lengths[0] < request.input_ids.shape[1] // 2  # only what is new was prefilled
    assert_same(second, fresh)
    assert session.messages[-1] == {"role": "assistant", "content": second.text}


def test_session_step_that_fails_leaves_the_session_usable(engine, image, other_image, monkeypatch):
    rt = Engine(engine.model)
    session = rt.session()
    first = session.predict(image, "What happens next?", seed=1, **SETTINGS)
    with monkeypatch.context() as patch:
        _hooked_denoise(rt, patch, lambda step: time.sleep(0.2))
        with pytest.raises(RequestTimeout):
            session.predict(other_image, "And then?", timeout_s=0.1, seed=1, num_inference_steps=4,
                            max_new_tokens=5)
    assert len(session.messages) == 2  # the failed step left no turn behind
    second = session.predict(other_image, "And then?", seed=1, **SETTINGS)
    messages = session.messages[:2] + [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And then?"}]}]
    assert messages[1] == {"role": "assistant", "content": first.text}
    assert_same(second, rt.predict([image, other_image], messages=messages, seed=1, **SETTINGS))
