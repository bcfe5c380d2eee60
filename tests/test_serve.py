"""The terminal chat and the OpenAI-compatible server, on a tiny pair, through the official openai client."""

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import make_pair

from c2c.serve import chat, create_app, running

KEY = "test-key"
HELLO = [{"role": "user", "content": "Hello there"}]
PROMPTS = ["Hello there", "What is the capital of France?", "Cats, dogs and birds are animals. Which planet?"]


@pytest.fixture(scope="module")
def pair():
    return make_pair("qwen", ("llama",))  # its greedy answers are varied text, and fusion changes them


@pytest.fixture(scope="module")
def url(pair):
    app = create_app(pair, api_key=KEY, max_prompt_tokens=64, max_tokens_limit=240, max_body_bytes=4096)
    with running(app) as base:
        yield base


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


class GatedPair:
    """The pair, but ``generate`` waits for ``gate`` and records batch sizes: queueing becomes deterministic."""

    def __init__(self, pair):
        self.pair, self.gate, self.entered, self.batches = pair, threading.Event(), threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.pair, name)

    def generate(self, prompts, **kwargs):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(prompts))
        return self.pair.generate(prompts, **kwargs)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------ answers
def test_models_list_names_the_pair(client, pair):
    (model,) = client.models.list().data
    assert model.id == "c2c"
    assert model.model_extra == {"receiver": pair.receiver.name, "sharers": [pair.sharers[0].name]}


def test_chat_completion_is_the_pairs_greedy_answer(client, pair):
    response = client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=12, temperature=0)
    assert response.choices[0].message.content == pair.generate(HELLO, max_new_tokens=12)[0]
    assert response.choices[0].finish_reason == "length"
    prompt_tokens = len(pair.render_prompt(HELLO).ids)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, 12)


def test_streamed_deltas_join_to_the_whole_answer(client):
    whole = client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1 and "".join(deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_sampled_answers_respect_max_tokens(client):
    response = client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=5, temperature=0.8, top_p=0.9)
    choice, tokens = response.choices[0], response.usage.completion_tokens
    assert (choice.finish_reason, tokens) == ("length", 5) or (choice.finish_reason == "stop" and tokens < 5)


def test_completions_fuse_each_prompt_as_a_user_message(client, pair):
    response = client.completions.create(model="c2c", prompt=PROMPTS[:2], max_tokens=10, temperature=0)
    assert [c.text for c in response.choices] == pair.generate(PROMPTS[:2], max_new_tokens=10)


def test_stop_sequence_ends_the_answer_before_it(client, pair):
    full = pair.generate(PROMPTS[0], max_new_tokens=12)[0]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    expected = full[:full.find(stop)]
    whole = client.completions.create(model="c2c", prompt=PROMPTS[0], max_tokens=12, temperature=0, stop=[stop])
    streamed = client.completions.create(model="c2c", prompt=PROMPTS[0], max_tokens=12, temperature=0, stop=stop,
                                         stream=True)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (expected, "stop")
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_c2c_false_answers_with_the_receiver_alone(client, pair):
    response = client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=12, temperature=0,
                                              extra_body={"c2c": False})
    alone = pair.generate(HELLO, max_new_tokens=12, fuse=False)[0]
    assert response.choices[0].message.content == alone != pair.generate(HELLO, max_new_tokens=12)[0]


# ------------------------------------------------------------------------------------------------ batching
def test_requests_that_arrive_together_run_as_one_batch_with_unchanged_answers(pair):
    lengths = [6, 12, 12]  # rows of one batch may ask for different lengths
    alone = [pair.generate(p, max_new_tokens=n)[0] for p, n in zip(PROMPTS, lengths)]
    gated = GatedPair(pair)
    with running(create_app(gated, max_batch=8)) as base, ThreadPoolExecutor(4) as pool:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)

        def ask(prompt: str, max_tokens: int) -> str:
            return client.completions.create(model="c2c", prompt=prompt, max_tokens=max_tokens,
                                             temperature=0).choices[0].text

        first = pool.submit(ask, "Hello", 4)  # holds the model while the others queue up
        gated.entered.wait(10)
        answers = [pool.submit(ask, p, n) for p, n in zip(PROMPTS, lengths)]
        wait_until(lambda: health(base)["waiting"] == 3)
        gated.gate.set()
        assert [a.result(30) for a in answers] == alone
        first.result(30)
        assert gated.batches == [1, 3] and health(base)["largest_batch"] == 3


def test_a_full_queue_answers_429(pair):
    gated = GatedPair(pair)
    with running(create_app(gated, max_queue=1)) as base, ThreadPoolExecutor(2) as pool:
        request = {"model": "c2c", "prompt": "Hi", "max_tokens": 2}
        first = pool.submit(httpx.post, f"{base}/v1/completions", json=request, timeout=30)
        gated.entered.wait(10)
        second = pool.submit(httpx.post, f"{base}/v1/completions", json=request, timeout=30)
        wait_until(lambda: health(base)["waiting"] == 1)
        refused = httpx.post(f"{base}/v1/completions", json=request)
        gated.gate.set()
        assert refused.status_code == 429 and "retry later" in refused.json()["error"]["message"]
        assert first.result().status_code == second.result().status_code == 200


# ------------------------------------------------------------------------------------------------ cancellation
def test_a_streaming_client_that_disconnects_stops_its_generation(url):
    before = health(url)["cancelled"]
    request = {"model": "c2c", "messages": HELLO, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=request,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if '"content"' in line)
    # "cancelled" counts generations ended by their cancel flag, before their max_tokens
    wait_until(lambda: health(url)["cancelled"] == before + 1)


def test_a_waiting_request_whose_client_left_is_never_generated(pair):
    gated = GatedPair(pair)
    app = create_app(gated)
    with running(app) as base, ThreadPoolExecutor(1) as pool:
        request = {"model": "c2c", "prompt": "Hi", "max_tokens": 4}
        first = pool.submit(httpx.post, f"{base}/v1/completions", json=request, timeout=30)
        gated.entered.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/completions", json={**request, "max_tokens": 200}, timeout=0.5)
        engine = app.state.server.engine
        waiting = lambda: [job for job in (*engine.held, *engine.queue.queue) if job is not None]  # noqa: E731
        wait_until(lambda: waiting() and waiting()[0].cancel.is_set())
        gated.gate.set()
        assert first.result().status_code == 200
        wait_until(lambda: health(base)["cancelled"] == 1)
        assert gated.batches == [1]


# ------------------------------------------------------------------------------------------------ errors
def test_the_api_key_is_required(url):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "c2c", "messages": HELLO})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"messages": HELLO}, 400, "model"),
    ({"model": "gpt-4", "messages": HELLO}, 404, "model"),
    ({"model": "c2c"}, 400, "messages"),
    ({"model": "c2c", "messages": []}, 400, "messages"),
    ({"model": "c2c", "messages": [{"role": "user", "content": "  "}]}, 400, "messages"),
    ({"model": "c2c", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0]"),
    ({"model": "c2c", "messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "c2c", "messages": HELLO, "max_tokens": 241}, 400, "max_tokens"),
    ({"model": "c2c", "messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    ({"model": "c2c", "messages": [{"role": "user", "content": "word " * 60}]}, 400, "messages"),  # over 64 tokens
    ({"model": "c2c", "messages": HELLO, "padding": "x" * 5000}, 413, None),
])
def test_bad_requests_get_openai_shaped_errors(url, body, status, param):
    send = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, **send)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (status, param)
    assert set(error) == {"message", "type", "param", "code"} and len(error["message"]) > 20


def test_a_prompt_plus_max_tokens_over_the_receivers_positions_is_refused(pair):
    positions = pair.receiver.model.config.max_position_embeddings
    with running(create_app(pair, max_tokens_limit=positions)) as base:
        response = httpx.post(f"{base}/v1/chat/completions", json={"model": "c2c", "messages": HELLO,
                                                                   "max_tokens": positions})
    assert response.status_code == 400 and f"{positions} positions" in response.json()["error"]["message"]


def test_completions_refuse_token_id_prompts(url):
    response = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "c2c", "prompt": [[1, 2, 3]]})
    assert response.status_code == 400 and "token ids" in response.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------ terminal chat
class RecordingPair(GatedPair):
    def __init__(self, pair):
        super().__init__(pair)
        self.gate.set()
        self.calls = []

    def generate(self, prompts, **kwargs):
        self.calls.append((prompts[0], kwargs["fuse"]))
        return super().generate(prompts, **kwargs)


def test_chat_keeps_the_conversation_and_switches_the_sharer_off(pair):
    recording, output = RecordingPair(pair), io.StringIO()
    script = "Hello there\nWhat did I say?\n/sharer off\nWhat did I say?\n/quit\nnever read\n"
    chat(recording, max_new_tokens=8, input=io.StringIO(script), output=output)
    first = [{"role": "user", "content": "Hello there"}]
    answer = pair.generate(first, max_new_tokens=8)[0]
    second = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "What did I say?"}]
    fused = pair.generate(second, max_new_tokens=8)[0]
    third = second + [{"role": "assistant", "content": fused}, {"role": "user", "content": "What did I say?"}]
    assert recording.calls == [(first, True), (second, True), (third, False)]
    text = output.getvalue()
    assert f"c2c> {answer}\n" in text and f"c2c> {fused}\n" in text and "sharer off" in text
    assert f"receiver> {pair.generate(third, max_new_tokens=8, fuse=False)[0]}\n" in text
    assert text.endswith("bye\n")


def test_chat_reset_forgets_and_end_of_input_ends(pair):
    recording = RecordingPair(pair)
    chat(recording, max_new_tokens=2, input=io.StringIO("Hi\n/reset\nHi\n"), output=io.StringIO())
    assert [prompt for prompt, _ in recording.calls] == [[{"role": "user", "content": "Hi"}]] * 2


# ------------------------------------------------------------------------------------------------ issue 18
def test_more_prompts_than_the_queue_holds_get_400_not_retry_later(pair):
    with running(create_app(pair, max_queue=4)) as base:
        response = httpx.post(f"{base}/v1/completions", json={"model": "c2c", "prompt": ["Hi"] * 5, "max_tokens": 2})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "too_many_prompts" and "at most 4 per request" in error["message"]


def test_a_seed_gives_the_same_sampled_text(client):
    def answer(seed):
        return client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=12, temperature=1.0,
                                              seed=seed).choices[0].message.content
    first = answer(7)
    assert answer(7) == first
    assert any(answer(seed) != first for seed in (8, 9, 10))


@pytest.mark.parametrize("field,value", [("tools", [{"type": "function", "function": {"name": "f"}}]),
                                         ("response_format", {"type": "json_object"})])
def test_unsupported_parameters_are_refused_not_ignored(url, field, value):
    response = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "c2c", "messages": HELLO, field: value})
    assert response.status_code == 400 and response.json()["error"]["param"] == field


def test_a_client_that_stops_mid_body_leaves_one_log_line(url, caplog):
    import socket
    from urllib.parse import urlparse
    where = urlparse(url)
    with caplog.at_level("INFO", logger="c2c.serve"):  # before the request: the server may log at once
        with socket.create_connection((where.hostname, where.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"model\": ")
        wait_until(lambda: any("left while sending" in r.message for r in caplog.records))
    assert not any(r.exc_info for r in caplog.records)


def test_prompts_are_tokenized_only_on_the_model_thread():
    """Fast tokenizers are not safe across threads ("Already borrowed"): the handlers never tokenize."""
    pair = make_pair("qwen", ("llama",))
    threads = []

    def spied(base, name):
        method = getattr(base, name)

        def record(self, *args, **kwargs):
            threads.append(threading.current_thread().name)
            return method(self, *args, **kwargs)
        return record

    tokenizers = [pair.receiver.tokenizer, pair.sharers[0].tokenizer]
    classes = [type(t) for t in tokenizers]
    for tokenizer, base in zip(tokenizers, classes):  # the tiny models are shared: restored below
        tokenizer.__class__ = type(base.__name__, (base,), {name: spied(base, name) for name in
                                                            ("__call__", "encode", "decode", "apply_chat_template")})
    try:
        with running(create_app(pair, max_prompt_tokens=64)) as base, ThreadPoolExecutor(4) as pool:
            requests = [{"model": "c2c", "prompt": p, "max_tokens": 3, "temperature": 0} for p in PROMPTS]
            requests.append({"model": "c2c", "prompt": "word " * 80, "max_tokens": 3})  # refused: over 64 tokens
            answers = list(pool.map(lambda r: httpx.post(f"{base}/v1/completions", json=r, timeout=30), requests))
    finally:
        for tokenizer, base in zip(tokenizers, classes):
            tokenizer.__class__ = base
    assert [a.status_code for a in answers] == [200, 200, 200, 400]
    assert answers[3].json()["error"]["code"] == "context_length_exceeded"
    assert threads and set(threads) == {"c2c-engine"}


def test_logprobs_in_openais_shapes_match_the_greedy_tokens(client, pair):
    answer = client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=6, temperature=0, logprobs=True,
                                            top_logprobs=3).choices[0]
    content = answer.logprobs.content
    assert "".join(t.token for t in content) == answer.message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token  # greedy: the likeliest
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob) and token.logprob <= 0
        assert bytes(token.bytes).decode() == token.token
    plain = client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=6, temperature=0).choices[0]
    assert plain.logprobs is None and plain.message.content == answer.message.content
    completion = client.completions.create(model="c2c", prompt="Hello there", max_tokens=5, temperature=0,
                                           logprobs=2).choices[0]
    assert "".join(completion.logprobs.tokens) == completion.text and len(completion.logprobs.token_logprobs) == 5
    assert all(len(top) == 2 for top in completion.logprobs.top_logprobs)
    chunks = list(client.chat.completions.create(model="c2c", messages=HELLO, max_tokens=6, temperature=0,
                                                 logprobs=True, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content])
    with pytest.raises(openai.BadRequestError, match="needs 'logprobs': true"):
        client.chat.completions.create(model="c2c", messages=HELLO, top_logprobs=2)


# ------------------------------------------------------------------------------------------------ scheduling
def test_turns_go_to_the_batch_with_the_least_work_left():
    from c2c.serve.engine import Turns
    turns, order = Turns(), []

    def batch(number, steps):
        turns.first_turn(number)
        for _ in range(steps):
            time.sleep(0.005)
            order.append(number)
            turns.turn(number)
        turns.leave(number)

    turns.enter(1, 40)
    long = threading.Thread(target=batch, args=(1, 40))
    long.start()
    wait_until(lambda: order.count(1) >= 3)
    turns.enter(2, 5)
    short = threading.Thread(target=batch, args=(2, 5))
    short.start()
    short.join(10)
    long.join(10)
    # the short batch runs its five steps back to back as soon as it is in; the long one waits, then finishes
    first = order.index(2)
    assert order[first:first + 5] == [2] * 5 and order.count(1) == 40 and order[-1] == 1
    assert 3 <= first <= 5  # it waited for one turn of the long batch at most
    assert not turns.work_left and turns.holder is None


def test_a_short_request_passes_a_long_one_between_decoding_steps(pair):
    from c2c.serve.engine import Engine, Job, Sampling
    engine = Engine(pair, max_batch=8, window_s=0.0, max_queue=8, prefill_chunk=4)
    engine.start()
    finished, deltas = [], []

    def job(name, prompt, tokens):
        def post(kind, value):
            if kind == "delta" and name == "long":
                deltas.append(value)
            if kind in ("done", "error"):
                finished.append((name, kind))
        return Job(prompt, tokens, Sampling(), post)

    long_prompt = "Tell me everything about the sea. " * 12
    engine.submit([job("long", long_prompt, 200)])
    wait_until(lambda: len(deltas) >= 2)  # the long request is decoding
    engine.submit([job("short", "Hi", 3)])
    wait_until(lambda: len(finished) == 2, timeout=60)
    engine.stop()
    assert finished == [("short", "done"), ("long", "done")]
    assert engine.stats["most_in_flight"] == 2 and engine.stats["batches"] == 2
