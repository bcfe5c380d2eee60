"""Context handoff on the surfaces: ``c2c generate --sharer-context``, the chat's ``/context`` and the server's
``sharer_context`` field, on a tiny pair whose translator is fitted in seconds (a text only the sharer reads)."""

import io
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from test_serve import GatedPair, health, wait_until
from tiny import tiny

from c2c.cli import main
from c2c.training.fit_translators import fit_pair, fitting_texts, split_texts
from c2c.model.pair import C2CModel
from c2c.serve import Job, Sampling, chat, create_app, generate_jobs, running
from c2c.translator.config import TranslatorConfig

pytestmark = pytest.mark.usefixtures("isolated_cache")  # conversions go to a temporary cache

QUESTION = "What is the capital of France?"
OTHER = "Which planet is closest to the sun?"
CONTEXT = "The capital of France is Paris. Water boils at 100 degrees."
OTHER_CONTEXT = "Tessa's favourite colour is violet. Thea's job is plumber."
TOKENS = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A fitted translator pair saved as a checkpoint over tiny models saved as folders (as a user has them)."""
    root = tmp_path_factory.mktemp("context")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C2C_CACHE_DIR", str(root / "cache"))
        for kind in ("llama", "gemma"):
            tiny(kind).model.save_pretrained(root / kind)
            tiny(kind).tokenizer.save_pretrained(root / kind)
        pair = C2CModel.create(str(root / "llama"), [str(root / "gemma")], translator=TranslatorConfig(),
                               chat_template=True)
        train, held = split_texts(fitting_texts([{"synthetic": 200, "facts": 1}]), 0.1, 0)
        fit_pair(pair, train, held, progress=False)
        pair.save_pretrained(root / "fitted")
    return root / "fitted"


@pytest.fixture(scope="module")
def pair(checkpoint):
    import torch
    from safetensors.torch import load_file
    loaded = C2CModel.from_pretrained(checkpoint)
    saved = load_file(str(checkpoint / "fuser.safetensors"))  # the fitted maps, not a fresh (all-zero) translator
    state = {f"translators.{k}": v for k, v in loaded.translators.state_dict().items()}
    assert state.keys() == {k for k in saved if k.startswith("translators.")} and len(loaded.translators) == 1
    assert all(torch.equal(v, saved[k].float()) for k, v in state.items())
    assert all(linear.weight.abs().sum() > 0 for linear in loaded.translators[0].maps)
    return loaded


@pytest.fixture
def context_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(CONTEXT, encoding="utf-8")
    return path


def with_context(pair, prompt, context=CONTEXT, **kwargs):
    return pair.generate(prompt, max_new_tokens=TOKENS, sharer_contexts=context, **kwargs)[0]


def alone(pair, prompt):
    return pair.generate(prompt, max_new_tokens=TOKENS, fuse=False)[0]


# ------------------------------------------------------------------------------------------------ c2c generate
def test_generate_reads_the_sharer_context_and_no_fuse_is_the_receiver_alone(checkpoint, pair, context_file,
                                                                             capsys):
    def generate(*extra):
        main(["generate", "--fuser", str(checkpoint), "--max-new-tokens", str(TOKENS), *extra, QUESTION])
        return capsys.readouterr()

    fused = generate("--no-stream", "--sharer-context", str(context_file)).out
    ignored = generate("--no-stream", "--no-fuse", "--sharer-context", str(context_file))
    plain = generate("--no-stream", "--no-fuse").out
    assert fused == with_context(pair, QUESTION) + "\n"
    assert ignored.out == plain == alone(pair, QUESTION) + "\n" != fused
    assert "not read" in ignored.err
    streamed = generate("--sharer-context", str(context_file)).out  # one prompt streams, as without a context
    assert streamed.strip() == fused.strip()


def test_generate_sends_the_context_with_every_prompt(checkpoint, pair, context_file, capsys):
    main(["generate", "--fuser", str(checkpoint), "--max-new-tokens", str(TOKENS), "--sharer-context",
          str(context_file), QUESTION, OTHER])
    expected = pair.generate([QUESTION, OTHER], max_new_tokens=TOKENS, sharer_contexts=CONTEXT)
    assert capsys.readouterr().out == "".join(answer + "\n" for answer in expected)


def test_read_context_saves_a_context_that_generate_answers_from_as_from_its_text(checkpoint, pair, context_file,
                                                                                 tmp_path, capsys):
    saved = tmp_path / "notes.safetensors"
    main(["read-context", "--fuser", str(checkpoint), "--context", str(context_file), "--out", str(saved)])
    assert f"saved to {saved}" in capsys.readouterr().out and saved.is_file()
    main(["generate", "--fuser", str(checkpoint), "--max-new-tokens", str(TOKENS), "--no-stream", "--sharer-context",
          str(saved), QUESTION, OTHER])
    expected = pair.generate([QUESTION, OTHER], max_new_tokens=TOKENS, sharer_contexts=CONTEXT)
    assert capsys.readouterr().out == "".join(answer + "\n" for answer in expected)
    with pytest.raises(SystemExit, match=r"--out .*notes\.txt: a translated context is saved as \.safetensors"):
        main(["read-context", "--fuser", str(checkpoint), "--context", str(context_file), "--out",
              str(tmp_path / "notes.txt")])
    with pytest.raises(SystemExit, match="already a translated context; give the text file"):
        main(["read-context", "--fuser", str(checkpoint), "--context", str(saved), "--out", str(saved)])
    (tmp_path / "bad.safetensors").write_text("text, not tensors")
    with pytest.raises(SystemExit, match="error: --sharer-context: .*bad.safetensors.* is not a readable translated"):
        main(["generate", "--fuser", str(checkpoint), "--sharer-context", str(tmp_path / "bad.safetensors"), "Hi"])


@pytest.mark.parametrize("kind,says", [("missing", "does not exist"), ("folder", "is a folder"),
                                       ("empty", "is empty"), ("blank", "is empty"), ("latin1", "not UTF-8")])
def test_a_bad_context_file_is_one_error_line_before_any_model_loads(tmp_path, monkeypatch, kind, says):
    path = tmp_path / kind
    if kind == "folder":
        path.mkdir()
    elif kind != "missing":
        path.write_bytes({"empty": b"", "blank": b" \n\t\n", "latin1": "café".encode("latin-1")}[kind])
    monkeypatch.setattr("c2c.cli._load_pair", lambda args: pytest.fail("a model loaded before the file was checked"))
    with pytest.raises(SystemExit) as exit:
        main(["generate", "--sharer-context", str(path), QUESTION])
    message = str(exit.value)
    assert message.startswith("error: --sharer-context: ") and str(path) in message and says in message
    assert "\n" not in message


def test_a_context_over_the_translators_limit_is_a_clear_error(checkpoint, tmp_path, context_file):
    small = tmp_path / "small"
    shutil.copytree(checkpoint, small)
    config = json.loads((small / "c2c_config.json").read_text())
    config["translator"]["max_context_tokens"] = 3
    (small / "c2c_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="max_context_tokens=3"):
        main(["generate", "--fuser", str(small), "--no-stream", "--sharer-context", str(context_file), QUESTION])


@pytest.mark.parametrize("channel", ["fuser", "translator"])
def test_a_long_context_file_is_refused_at_once_before_any_model_loads(checkpoint, tmp_path, monkeypatch, channel):
    """Issue 31: a 20,000-word file made a fuser prefill for minutes; every context file is bounded by the
    command's character limit (lowered here), refused within a second with the limit named, on either channel."""
    from c2c.model.pair import C2CModel as Pair
    folder = checkpoint
    if channel == "fuser":
        folder = tmp_path / "fuser"
        Pair.create(tiny("llama"), [tiny("gemma")]).save_pretrained(folder)
    monkeypatch.setattr("c2c.inputs.context.MAX_CONTEXT_CHARS", 100)
    monkeypatch.setattr(Pair, "from_pretrained", lambda *a, **k: pytest.fail("a model loaded"))
    long = tmp_path / "long.txt"
    long.write_text("word " * 21, encoding="utf-8")  # 105 characters
    for path, says in ((long, "holds 105 characters, over the limit of 100 characters"),
                       ("/dev/zero", "holds more than 400 bytes, over the limit of 100 characters")):  # no hang
        with pytest.raises(SystemExit) as refused:
            main(["generate", "--fuser", str(folder), "--sharer-context", str(path), QUESTION])
        assert says in str(refused.value) and "\n" not in str(refused.value)
    long.write_text("word " * 20, encoding="utf-8")  # 100 characters: taken (the model would load next)
    with pytest.raises(BaseException, match="a model loaded"):
        main(["generate", "--fuser", str(folder), "--sharer-context", str(long), QUESTION])


def test_a_context_longer_than_the_translator_was_fitted_on_warns_in_one_line(checkpoint, tmp_path, monkeypatch):
    import warnings

    from c2c.inputs.context import ContextWarning
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # c2c's main sets its own: restored
    config = json.loads((checkpoint / "c2c_config.json").read_text())
    fitted = config["sharers"][0]["fitted_context_tokens"]
    assert isinstance(fitted, int) and fitted > 0  # recorded by the fit
    long = tmp_path / "long.txt"
    long.write_text(" ".join([CONTEXT] * 12), encoding="utf-8")
    with pytest.warns(ContextWarning) as caught:
        main(["generate", "--fuser", str(checkpoint), "--max-new-tokens", "2", "--sharer-context", str(long), QUESTION])
    (record,) = caught
    shown = warnings.formatwarning(record.message, record.category, record.filename, record.lineno)
    assert re.fullmatch(rf"warning: the context is \d+ tokens for sharer \S+, longer than the longest text its "
                        rf"translator was fitted on \({fitted} tokens\): [^\n]*\n", shown)


def test_help_texts_name_the_context_options(capsys):
    for command, expected in (("generate", "--sharer-context FILE"), ("chat", "/context FILE"),
                              ("serve", "--max-context-chars")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert expected in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ terminal chat
class Recording(GatedPair):
    """The pair, recording each generate call's first prompt, fuse and sharer_contexts."""

    def __init__(self, pair):
        super().__init__(pair)
        self.gate.set()
        self.calls = []

    def generate(self, prompts, **kwargs):
        self.calls.append((prompts[0], kwargs["fuse"], kwargs.get("sharer_contexts")))
        return super().generate(prompts, **kwargs)


def test_chat_context_command_sets_and_clears_the_sharers_context(pair, context_file):
    recording, output = Recording(pair), io.StringIO()
    script = f"/context {context_file}\n{QUESTION}\n/context\n/context off\n{QUESTION}\n/quit\n"
    chat(recording, max_new_tokens=TOKENS, input=io.StringIO(script), output=output)
    first = [{"role": "user", "content": QUESTION}]
    answer = with_context(pair, first)
    second = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": QUESTION}]
    assert recording.calls == [(first, True, [CONTEXT]), (second, True, None)]
    text = output.getvalue()
    assert "/context FILE" in text.splitlines()[0]  # the commands line
    assert f"{context_file}, {len(CONTEXT)} characters" in text and "sharer context off" in text
    assert f"c2c> {answer}\n" in text and answer != pair.generate(first, max_new_tokens=TOKENS)[0]
    assert f"c2c> {pair.generate(second, max_new_tokens=TOKENS)[0]}\n" in text


def test_chat_ignores_the_context_while_the_sharer_is_off(pair, context_file):
    recording, output = Recording(pair), io.StringIO()
    chat(recording, max_new_tokens=TOKENS, input=io.StringIO(f"/context {context_file}\n/sharer off\n{QUESTION}\n"),
         output=output)
    first = [{"role": "user", "content": QUESTION}]
    assert recording.calls == [(first, False, None)]
    assert f"receiver> {alone(pair, first)}\n" in output.getvalue()


def test_chat_context_errors_are_one_line_and_the_chat_goes_on(pair, tmp_path, context_file, monkeypatch):
    (tmp_path / "empty.txt").write_text("  \n")
    recording, output = Recording(pair), io.StringIO()
    script = (f"/context {context_file}\n/context {tmp_path / 'missing.txt'}\n/context {tmp_path / 'empty.txt'}\n"
              f"/context {tmp_path}\n{QUESTION}\n")
    monkeypatch.setattr(pair.config.translator, "max_context_tokens", 3)  # the next file is refused by prepare
    chat(recording, max_new_tokens=TOKENS, input=io.StringIO(script), output=output)
    errors = [line for line in output.getvalue().splitlines() if "error:" in line]
    assert len(errors) == 4 and "max_context_tokens=3" in errors[0] and "does not exist" in errors[1]
    assert "is empty" in errors[2] and "is a folder" in errors[3]
    assert all("still off" in line for line in errors)
    assert recording.calls == [([{"role": "user", "content": QUESTION}], True, None)]  # answered, without context


def test_chat_keeps_the_last_good_context_after_an_error(pair, tmp_path, context_file):
    recording = Recording(pair)
    script = f"/context {context_file}\n/context {tmp_path / 'missing.txt'}\n{QUESTION}\n"
    output = io.StringIO()
    chat(recording, max_new_tokens=TOKENS, input=io.StringIO(script), output=output)
    assert "unchanged" in output.getvalue()
    assert recording.calls == [([{"role": "user", "content": QUESTION}], True, [CONTEXT])]


# ------------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def url(pair):
    with running(create_app(pair, max_context_chars=200, max_body_bytes=8192)) as base:
        yield base


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def test_sharer_context_on_both_endpoints(client, pair):
    messages = [{"role": "user", "content": QUESTION}]
    response = client.chat.completions.create(model="c2c", messages=messages, max_tokens=TOKENS, temperature=0,
                                              extra_body={"sharer_context": CONTEXT})
    assert response.choices[0].message.content == with_context(pair, messages) != alone(pair, messages)
    completions = client.completions.create(model="c2c", prompt=[QUESTION, OTHER], max_tokens=TOKENS, temperature=0,
                                            extra_body={"sharer_context": CONTEXT})
    expected = pair.generate([QUESTION, OTHER], max_new_tokens=TOKENS, sharer_contexts=CONTEXT)
    assert [choice.text for choice in completions.choices] == expected
    streamed = client.completions.create(model="c2c", prompt=QUESTION, max_tokens=TOKENS, temperature=0, stream=True,
                                         extra_body={"sharer_context": CONTEXT})
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected[0]


def test_a_repeated_sharer_context_is_read_once_and_answers_as_a_fresh_reading(client, pair):
    """The server's requests share the pair's memo of read contexts: the second request about the same text runs
    no sharer pass, and both answers equal a reading made afresh."""
    pair.context_memo.clear()
    fresh = with_context(pair, QUESTION)
    pair.context_memo.clear()
    misses = pair.context_memo.misses
    answers = [client.completions.create(model="c2c", prompt=prompt, max_tokens=TOKENS, temperature=0,
                                         extra_body={"sharer_context": CONTEXT}).choices[0].text
               for prompt in (QUESTION, OTHER, QUESTION)]
    assert answers[0] == answers[2] == fresh and answers[1] == with_context(pair, OTHER)
    assert pair.context_memo.misses == misses + 1 and len(pair.context_memo.entries) == 1


def test_c2c_false_ignores_the_sharer_context(client, pair):
    response = client.completions.create(model="c2c", prompt=QUESTION, max_tokens=TOKENS, temperature=0,
                                         extra_body={"sharer_context": CONTEXT, "c2c": False})
    assert response.choices[0].text == alone(pair, QUESTION)


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
@pytest.mark.parametrize("context,says", [
    (123, "must be a non-empty string"),
    (["a list"], "must be a non-empty string"),
    ("", "must be a non-empty string"),
    ("   \n", "must be a non-empty string"),
    ("x" * 201, "limit of 200"),
])
def test_a_bad_sharer_context_is_a_400_naming_the_field(url, endpoint, context, says):
    body = {"model": "c2c", "max_tokens": 2, "sharer_context": context}
    body.update({"messages": [{"role": "user", "content": QUESTION}]} if endpoint == "chat/completions"
                else {"prompt": QUESTION})
    response = httpx.post(f"{url}/v1/{endpoint}", json=body)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (400, "sharer_context") and says in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_context_the_translator_refuses_is_a_400_for_that_request_only(url, pair, monkeypatch):
    monkeypatch.setattr(pair.config.translator, "max_context_tokens", 3)
    refused = httpx.post(f"{url}/v1/completions", json={"model": "c2c", "prompt": QUESTION, "max_tokens": 2,
                                                        "sharer_context": CONTEXT})
    error = refused.json()["error"]
    assert (refused.status_code, error["param"]) == (400, "sharer_context")
    assert "max_context_tokens=3" in error["message"]
    fine = httpx.post(f"{url}/v1/completions", json={"model": "c2c", "prompt": QUESTION, "max_tokens": 2})
    assert fine.status_code == 200


def test_a_batch_mixing_contexts_gives_each_request_its_answer_alone(pair):
    expected = [with_context(pair, QUESTION), pair.generate(OTHER, max_new_tokens=TOKENS)[0],
                with_context(pair, OTHER, OTHER_CONTEXT)]
    contexts = [CONTEXT, None, OTHER_CONTEXT]
    gated, calls = GatedPair(pair), []
    generate = gated.generate
    gated.generate = lambda prompts, **kwargs: calls.append(kwargs.get("sharer_contexts")) or generate(prompts,
                                                                                                       **kwargs)
    with running(create_app(gated, max_batch=8)) as base, ThreadPoolExecutor(4) as pool:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)

        def ask(prompt, context):
            extra = {"sharer_context": context} if context else {}
            return client.completions.create(model="c2c", prompt=prompt, max_tokens=TOKENS, temperature=0,
                                             extra_body=extra).choices[0].text

        first = pool.submit(ask, "Hello", None)  # holds the model while the others queue up
        gated.entered.wait(10)
        answers = []
        for count, (prompt, context) in enumerate(zip([QUESTION, OTHER, OTHER], contexts), 1):
            answers.append(pool.submit(ask, prompt, context))
            wait_until(lambda: health(base)["waiting"] == count)  # in this order
        gated.gate.set()
        assert [answer.result(30) for answer in answers] == expected
        first.result(30)
    assert gated.batches == [1, 3] and calls == [None, contexts]


def test_a_row_that_prepare_refuses_fails_alone(pair, monkeypatch):
    """Should a batch reach the model with one context the models refuse, only its job gets the error."""
    monkeypatch.setattr(pair.config.translator, "max_context_tokens", 12)
    events = {0: [], 1: []}
    jobs = [Job(QUESTION, TOKENS, Sampling(), lambda kind, value, i=i: events[i].append((kind, value)),
                context=context) for i, context in enumerate(["word " * 40, None])]
    reasons = generate_jobs(pair, jobs)
    assert reasons[0] == "error" and reasons[1] in ("stop", "length")
    assert isinstance(events[0][0][1], ValueError) and "max_context_tokens=12" in str(events[0][0][1])
    assert "".join(v for k, v in events[1] if k == "delta") == pair.generate(QUESTION, max_new_tokens=TOKENS)[0]
