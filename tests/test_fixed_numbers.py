"""Fixed expected numbers on tiny deterministic inputs, beside the property tests: the fuser's residual, the
translator's closed-form fit and the cloze scorer. Every parameter and input is set by a formula (no random
initialisation, no trained tokenizer), the expected values were written from a run, and each test also checks them
against an independent computation written here in plain Python / float64 (not the code under test)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from c2c.data import MCItem
from c2c.evaluation.scorers import Prefilled, score_items
from c2c.model.config import FuserConfig
from c2c.model.fuser import LayerFuser
from c2c.runtime.passes import prompt_cache
from c2c.translator.config import TranslatorConfig
from c2c.translator.fit import TranslatorFit
from c2c.translator.model import ContextTranslator


def formula(shape, offset: float, scale: float = 0.5) -> torch.Tensor:
    """A fixed, irregular tensor: scale * sin(0.7 i + offset) over the flat index i."""
    n = math.prod(shape)
    return (scale * torch.sin(0.7 * torch.arange(n, dtype=torch.float64) + offset)).float().reshape(shape)


def set_parameters(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for index, (name, parameter) in enumerate(sorted(module.named_parameters())):
            parameter.copy_(formula(parameter.shape, index) if not name.endswith("norm.weight") else
                            1 + formula(parameter.shape, index, 0.1))


# ------------------------------------------------------------------------------------------------ the fuser
# The K residual of two tokens (one receiver head of 2 dimensions), gate open: gate * sigmoid(weight) * projection
FUSER_KEY_RESIDUAL = [-0.13726017, -0.06496688, -0.14068744, -0.02486191]


def plain_linear(x, weight, bias=None):
    return [sum(w * v for w, v in zip(row, x)) + (bias[i] if bias is not None else 0.0) for i, row in enumerate(weight)]


def plain_rmsnorm(x, weight, eps=1e-6):
    rms = math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v / rms * w for v, w in zip(x, weight)]


def plain_gelu(x):
    return [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]


def plain_ffn(x, block):
    p = {n: t.double().tolist() for n, t in block.state_dict().items()}
    inner = plain_gelu(plain_linear(plain_rmsnorm(x, p["norm.weight"]), p["up.weight"]))
    return [a + b for a, b in zip(x, plain_linear(inner, p["down.weight"]))]


def plain_branch(branch, sharer_token, receiver_token):
    """The fuser branch for one token, written out: concat -> linear -> FFN trunk -> projection; weight head."""
    p = {n: t.double().tolist() for n, t in branch.state_dict().items()}
    hidden = plain_ffn(plain_linear(sharer_token + receiver_token, p["input.weight"], p["input.bias"]), branch.trunk)
    projection = plain_linear(hidden, p["projection.0.weight"], p["projection.0.bias"])
    logit = plain_linear(plain_ffn(hidden, branch.weight[0]), p["weight.1.weight"], p["weight.1.bias"])[0]
    return [1 / (1 + math.exp(-logit)) * v for v in projection]


def test_the_fuser_residual_has_its_fixed_values():
    config = FuserConfig(hidden_size=3, intermediate_size=4, num_layers=2, dropout=0.0, zero_init=False)
    fuser = LayerFuser(sharer_heads=1, sharer_head_dim=2, receiver_heads=1, receiver_head_dim=2, config=config)
    set_parameters(fuser)
    with torch.no_grad():
        fuser.gate_logits.copy_(torch.tensor([1.0, -1.0]))  # K open, V shut
    fuser.eval()
    sharer_k, sharer_v = formula((1, 1, 2, 2), 10.0), formula((1, 1, 2, 2), 11.0)
    receiver_k, receiver_v = formula((1, 1, 2, 2), 12.0), formula((1, 1, 2, 2), 13.0)
    with torch.no_grad():
        key, value = fuser(sharer_k, sharer_v, receiver_k, receiver_v)
    assert value is None  # a shut gate adds nothing
    got = key[0, 0].flatten().tolist()  # (tokens, d_R) of the one head, token by token
    plain = [v for t in range(2) for v in plain_branch(fuser.key, sharer_k[0, 0, t].double().tolist(),
                                                           receiver_k[0, 0, t].double().tolist())]
    assert got == pytest.approx(plain, abs=1e-6)
    assert got == pytest.approx(FUSER_KEY_RESIDUAL, abs=1e-6)


# ------------------------------------------------------------------------------------------------ the translator
# The fitted map (D = 2 standardised inputs [K, V] x O = 2 outputs [K, V], row-major), the chosen strengths and
# the held-out R^2: the generating rule is y_K = 2 x_K - x_V, y_V = x_V / 2 (x standardised: times its std ~0.7)
TRANSLATOR_FIT = {"weight": [1.376087, -0.003701, -0.707574, 0.355327], "ridge": [0.01, 0.01], "r2": [0.9867, 0.7851]}


def translator_data(n: int, offset: float):
    """Sharer features (n, 2) [K, V] of one layer and receiver targets (n, 2) a noisy linear function of them."""
    x = torch.stack([torch.sin(0.9 * torch.arange(n, dtype=torch.float64) + offset),
                     torch.cos(1.3 * torch.arange(n, dtype=torch.float64) + 2 * offset)], 1)
    y = torch.stack([2 * x[:, 0] - x[:, 1] + 0.3, 0.5 * x[:, 1] + 1.0], 1)
    y = y + 0.2 * torch.sin(3.1 * torch.arange(n, dtype=torch.float64) + offset)[:, None]
    return x.float(), y.float()


def plain_ridge(x, y, held_x, held_y, strengths):
    """The closed-form fit in float64, written out: standardise (population std + 1e-6), then per output column
    group (K, V) the ridge strength with the least held-out squared error."""
    n = x.shape[0]
    mean = x.mean(0)
    scale = x.std(0, unbiased=False) + 1e-6
    z, zh = (x - mean) / scale, (held_x - mean) / scale
    y_mean = y.mean(0)
    best = {}
    for strength in strengths:
        w = torch.linalg.solve(z.T @ z / n + strength * torch.eye(x.shape[1], dtype=x.dtype), z.T @ (y - y_mean) / n)
        error = (zh @ w + y_mean - held_y) ** 2
        for column in (0, 1):
            sse = float(error[:, column].sum())
            if column not in best or sse < best[column][0]:
                best[column] = (sse, strength, w[:, column])
    return torch.stack([best[0][2], best[1][2]], 1), [best[0][1], best[1][1]]


def test_the_translator_fit_has_its_fixed_values():
    shape = SimpleNamespace(num_layers=1, num_kv_heads=1, head_dim=1)
    translator = ContextTranslator(shape, shape, TranslatorConfig(window=0, ridge=[0.01, 1.0, 10.0]), [[0]])
    fit = TranslatorFit(translator)
    x, y = translator_data(40, 0.0)
    held_x, held_y = translator_data(12, 5.0)
    fit.add([x], [y])
    fit.add([held_x], [held_y], held_out=True)
    report = fit.solve()
    weight = translator.maps[0].weight.T.double()  # (D, O) in standardised inputs
    plain_weight, plain_strengths = plain_ridge(x.double(), y.double(), held_x.double(), held_y.double(),
                                                [0.01, 1.0, 10.0])
    layer = report["layers"][0]
    got = {"weight": [round(v, 6) for v in weight.flatten().tolist()], "ridge": [layer["ridge_k"], layer["ridge_v"]],
           "r2": [layer["r2_k"], layer["r2_v"]]}
    assert torch.allclose(weight, plain_weight, atol=1e-5)
    assert got["ridge"] == plain_strengths
    assert got["weight"] == pytest.approx(TRANSLATOR_FIT["weight"], abs=1e-5)
    assert got["ridge"] == TRANSLATOR_FIT["ridge"] and got["r2"] == TRANSLATOR_FIT["r2"]


# ------------------------------------------------------------------------------------------------ the cloze scorer
# Log-likelihood per character of " blue", " green", " red" after "Sky is" (the cloze score, lm-eval's acc_norm)
CLOZE_SCORES = [-3.2512260, -2.9347296, -2.6549087]


class CharTokenizer:
    """One token per character, ids 1..15 (0 pads)."""
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [1 + ord(c) % 15 for c in text]}


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    set_parameters(model)
    return model


def test_the_cloze_scorer_has_its_fixed_values():
    model, tokenizer = tiny_llama(), CharTokenizer()
    prompt = tokenizer("Sky is")["input_ids"]
    item = MCItem("q", "Sky is", ["blue", "green", "red"], 0)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        state = Prefilled(model, tokenizer, ids, prompt_cache(model, ids, torch.ones_like(ids)))
        scores = score_items(state, [item], "cloze")[0]["scores"]
        plain = []  # one full forward of prompt + continuation, no cache: log-likelihood per character
        for text in (" blue", " green", " red"):
            row = prompt + tokenizer(text)["input_ids"]
            logprobs = torch.log_softmax(model(torch.tensor([row])).logits[0].double(), -1)
            total = sum(float(logprobs[t - 1, row[t]]) for t in range(len(prompt), len(row)))
            plain.append(total / len(text))
    assert scores == pytest.approx(plain, abs=1e-5)
    assert scores == pytest.approx(CLOZE_SCORES, abs=1e-5)
