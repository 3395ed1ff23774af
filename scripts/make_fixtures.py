#!/usr/bin/python3
"""Writes the whole-model reference fixtures the C++ tests compare against.

Run (from the repository root, with Debian's python3-torch, i.e. the system interpreter):

    /usr/bin/python3 scripts/make_fixtures.py

It writes tests/fixtures/models/{gpt2,llama,qwen3}_tiny.json, and the same three models as Hugging
Face directories tests/fixtures/hf/{gpt2,llama,qwen3}_tiny/ (config.json, model.safetensors, expected_logits.json; see "HF directories" below). The files
are committed, so CI and the C++ tests never need torch; rerun this only when the conventions change.
The output is deterministic: the same bytes on every run (fixed seeds, one thread).

Plain PyTorch, no transformers library; attention, GELU, RMSNorm and RoPE are written by hand
(torch 1.13 has no scaled_dot_product_attention).

Conventions (the C++ side follows exactly these):

- Weights are initialized in float32 from fixed seeds: normal(0, 0.02) for matrices and embeddings
  (GPT-2's residual projections attn.c_proj / mlp.c_proj use 0.02/sqrt(2*n_layer)), norm weights
  1 + normal(0, 0.1), biases normal(0, 0.02). The model is then converted to float64 and every
  reference (logits, loss, grads, AdamW steps) is computed in float64 from those float32-valued weights.
- Parameter names are the Hugging Face names of each family. Every weight matrix is stored in
  nn.Linear orientation [out_features, in_features], GPT-2 included (HF GPT-2 checkpoints use Conv1D
  [in, out]; the C++ importer transposes those, fixtures are already [out, in]).
- Batch: B=2, T=11 random token ids in [0, vocab); targets random ids with two entries set to -100
  (ignored). Loss = mean cross-entropy over the non-ignored targets (F.cross_entropy, ignore_index=-100).
- AdamW: torch.optim.AdamW (lr=1e-2, betas=(0.9, 0.95), eps=1e-8), weight_decay=0.1 only on parameters
  with >= 2 dimensions (matrices, embeddings), 0 on biases and norm weights. torch's AdamW is
  decoupled: p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
  p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps), t = 1, 2, 3. Three steps on the SAME batch;
  step_losses[i] is the loss before step i (step_losses[0] == loss); params_after is after step 3.
- GPT-2: x = wte[ids] + wpe[0..T-1]; per layer x += c_proj(attn(c_attn(ln_1(x)))),
  x += mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(x)))); logits = ln_f(x) @ wte^T (tied, no lm_head param).
  c_attn output [3C] splits as q | k | v, head h = columns h*hd..(h+1)*hd of each. LayerNorm uses the
  biased variance, eps inside the sqrt. gelu_tanh(x) = 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))).
- LLaMA: x = embed_tokens[ids]; per layer x += o_proj(attn(rope(q_proj(h)), rope(k_proj(h)), v_proj(h)))
  with h = input_layernorm(x), then x += down_proj(silu(gate_proj(h)) * up_proj(h)) with
  h = post_attention_layernorm(x); logits = lm_head(norm(x)). RMSNorm: x * rsqrt(mean(x^2) + eps) * w.
  RoPE in HF rotate_half layout: dim i pairs with i + hd/2, inv_freq_i = theta^(-2i/hd), i < hd/2,
  angle = pos * inv_freq (pos = 0..T-1), q' = q*cos + rotate_half(q)*sin with
  rotate_half(q) = [-q[hd/2:], q[:hd/2]] and cos/sin repeated over both halves. GQA: query head h uses
  kv head h // (H/Hkv).
- Qwen3: LLaMA with q and k normalized per head before RoPE (q = q_norm(q_proj(h) as [B, T, H, hd]),
  RMSNorm over hd with weights [hd]; k likewise with k_norm), hd = config head_dim (12, not
  hidden_size / heads = 8), and logits = norm(x) @ embed_tokens^T (tied, no lm_head).
- Attention: causal, scale 1/sqrt(hd), softmax over keys s <= t.
- JSON layout: {"name", "config" (HF config.json keys), "input_ids" [B][T], "targets" [B][T],
  "params" {name: {"shape", "data" (flat row-major)}}, "logits" {"shape", "data"}, "loss",
  "grads" {name: ...}, "adamw" {"lr", "betas", "eps", "weight_decay", "decay" [names], "steps"},
  "step_losses" [3], "params_after" {name: ...}}. Compact. Every float is Python's repr of the float64
  value (shortest decimal that round-trips the double). "params" are float32 values held in doubles,
  so strtod gives them exactly and casting to float is exact; strtof gives the same float.

HF directories: config.json as transformers writes it (indent 2, sorted keys, architectures,
torch_dtype, the usual extra keys); model.safetensors written by hand (8-byte little-endian header
length, a JSON header {"__metadata__": {"format": "pt"}, name: {"dtype": "F32", "shape", "data_offsets":
[begin, end]}} in sorted name order padded with spaces to a multiple of 8, then the raw float32 data in
the same order) with HF's real conventions: GPT-2 under "transformer." names with its Conv1D weights
(attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) stored [in, out], tied, so no lm_head.weight; LLaMA
untied with lm_head.weight. expected_logits.json holds the fixture batch's input_ids and the float64
logits {"shape": [B, T, V], "data"} copied from the JSON fixture (the same reference), and max_abs_logit.

Self-checks before writing: attention equals a naive per-head loop, hand GELU equals torch's tanh
GELU, RoPE scores depend only on relative position, and the analytic gradients of a few parameter
elements equal central finite differences in float64. Afterwards the whole fixture is redone in
float32 (torch, same weights) and its distance from the float64 reference is printed: what a correct
float32 engine should expect (see tests/fixtures/models/README.md for tolerances).
"""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)  # bitwise-deterministic reductions, and polite to shared cores

B, T = 2, 11
IGNORE = -100
ADAMW = {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "steps": 3}

GPT2_CONFIG = {
    "model_type": "gpt2", "vocab_size": 101, "n_positions": 16, "n_embd": 48, "n_layer": 2,
    "n_head": 4, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
    "activation_function": "gelu_new",
}

LLAMA_CONFIG = {
    "model_type": "llama", "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "hidden_act": "silu",
}

# Qwen3: LLaMA with an RMSNorm over each head of q and of k (q_norm, k_norm, weights [head_dim])
# before RoPE, a head_dim that is not hidden_size / heads (12, not 8), and a tied output head.
QWEN3_CONFIG = {
    "model_type": "qwen3", "vocab_size": 89, "hidden_size": 32, "intermediate_size": 56,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12,
    "max_position_embeddings": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "hidden_act": "silu",
}


def head_dim(cfg):
    return cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])


# ----------------------------------------------------------------------------------------------
# Initialization (float32, fixed generator), then float64 leaf tensors.

class Init:
    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.params = {}

    def normal(self, name, shape, std, mean=0.0):
        t = torch.empty(shape, dtype=torch.float32)
        t.normal_(mean, std, generator=self.gen)
        self.params[name] = t

    def matrix(self, name, shape, std=0.02):
        self.normal(name, shape, std)

    def bias(self, name, n):
        self.normal(name, (n,), 0.02)

    def norm_weight(self, name, n):
        self.normal(name, (n,), 0.1, mean=1.0)

    def to_leaves(self):
        # float32 values, held in float64, each a leaf that collects a gradient
        return {k: v.double().requires_grad_(True) for k, v in self.params.items()}


def gpt2_init(cfg, seed):
    C, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    init = Init(seed)
    init.matrix("transformer.wte.weight", (V, C))
    init.matrix("transformer.wpe.weight", (cfg["n_positions"], C))
    resid_std = 0.02 / math.sqrt(2 * L)
    for i in range(L):
        p = f"transformer.h.{i}."
        init.norm_weight(p + "ln_1.weight", C)
        init.bias(p + "ln_1.bias", C)
        init.matrix(p + "attn.c_attn.weight", (3 * C, C))
        init.bias(p + "attn.c_attn.bias", 3 * C)
        init.matrix(p + "attn.c_proj.weight", (C, C), resid_std)
        init.bias(p + "attn.c_proj.bias", C)
        init.norm_weight(p + "ln_2.weight", C)
        init.bias(p + "ln_2.bias", C)
        init.matrix(p + "mlp.c_fc.weight", (4 * C, C))
        init.bias(p + "mlp.c_fc.bias", 4 * C)
        init.matrix(p + "mlp.c_proj.weight", (C, 4 * C), resid_std)
        init.bias(p + "mlp.c_proj.bias", C)
    init.norm_weight("transformer.ln_f.weight", C)
    init.bias("transformer.ln_f.bias", C)
    return init.to_leaves()


def llama_init(cfg, seed):
    C, I, L, V = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                  cfg["vocab_size"])
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = head_dim(cfg)
    init = Init(seed)
    init.matrix("model.embed_tokens.weight", (V, C))
    for i in range(L):
        p = f"model.layers.{i}."
        init.norm_weight(p + "input_layernorm.weight", C)
        init.matrix(p + "self_attn.q_proj.weight", (H * hd, C))
        init.matrix(p + "self_attn.k_proj.weight", (Hkv * hd, C))
        init.matrix(p + "self_attn.v_proj.weight", (Hkv * hd, C))
        init.matrix(p + "self_attn.o_proj.weight", (C, H * hd))
        if cfg["model_type"] == "qwen3":
            init.norm_weight(p + "self_attn.q_norm.weight", hd)
            init.norm_weight(p + "self_attn.k_norm.weight", hd)
        init.norm_weight(p + "post_attention_layernorm.weight", C)
        init.matrix(p + "mlp.gate_proj.weight", (I, C))
        init.matrix(p + "mlp.up_proj.weight", (I, C))
        init.matrix(p + "mlp.down_proj.weight", (C, I))
    init.norm_weight("model.norm.weight", C)
    if not cfg["tie_word_embeddings"]:
        init.matrix("lm_head.weight", (V, C))
    return init.to_leaves()


# ----------------------------------------------------------------------------------------------
# Building blocks, written by hand.

def linear(x, w, b=None):
    y = x @ w.t()  # w is [out, in]
    return y if b is None else y + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def layer_norm(x, w, b, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance
    return (x - mean) / torch.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def causal_attention(q, k, v):
    """q [B, H, T, hd], k/v [B, Hkv, T, hd]; query head h uses kv head h // (H/Hkv)."""
    Bq, H, Tq, hd = q.shape
    group = H // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    mask = torch.ones(Tq, Tq, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def naive_attention(q, k, v):
    """Per-batch, per-head, per-query loop in plain Python floats: the reference for the above."""
    Bq, H, Tq, hd = q.shape
    group = H // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(Bq):
        for h in range(H):
            kh = h // group
            for t in range(Tq):
                s = [sum(q[b, h, t, d].item() * k[b, kh, u, d].item() for d in range(hd))
                     / math.sqrt(hd) for u in range(t + 1)]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                z = sum(e)
                for d in range(hd):
                    out[b, h, t, d] = sum(e[u] / z * v[b, kh, u, d].item() for u in range(t + 1))
    return out


def rope_cos_sin(T_, hd, theta):
    inv_freq = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # [hd/2]
    ang = torch.arange(T_, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat([ang, ang], dim=-1)  # [T, hd]
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------------------------
# Models.

def gpt2_forward(cfg, P, ids):
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    eps = cfg["layer_norm_epsilon"]
    hd = C // H
    Bn, Tn = ids.shape
    x = P["transformer.wte.weight"][ids] + P["transformer.wpe.weight"][:Tn]
    for i in range(L):
        p = f"transformer.h.{i}."
        h = layer_norm(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
        qkv = linear(h, P[p + "attn.c_attn.weight"], P[p + "attn.c_attn.bias"])
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(Bn, Tn, H, hd).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + linear(y, P[p + "attn.c_proj.weight"], P[p + "attn.c_proj.bias"])
        h = layer_norm(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
        h = gelu_tanh(linear(h, P[p + "mlp.c_fc.weight"], P[p + "mlp.c_fc.bias"]))
        x = x + linear(h, P[p + "mlp.c_proj.weight"], P[p + "mlp.c_proj.bias"])
    x = layer_norm(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], eps)
    return linear(x, P["transformer.wte.weight"])  # tied lm_head


def llama_forward(cfg, P, ids):
    C, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    hd = head_dim(cfg)
    Bn, Tn = ids.shape
    cos, sin = rope_cos_sin(Tn, hd, cfg["rope_theta"])
    x = P["model.embed_tokens.weight"][ids]
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms_norm(x, P[p + "input_layernorm.weight"], eps)
        q = linear(h, P[p + "self_attn.q_proj.weight"]).view(Bn, Tn, H, hd)
        k = linear(h, P[p + "self_attn.k_proj.weight"]).view(Bn, Tn, Hkv, hd)
        if cfg["model_type"] == "qwen3":  # per head, over its hd dimensions
            q = rms_norm(q, P[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, P[p + "self_attn.k_norm.weight"], eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = linear(h, P[p + "self_attn.v_proj.weight"]).view(Bn, Tn, Hkv, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = causal_attention(q, k, v).transpose(1, 2).reshape(Bn, Tn, H * hd)
        x = x + linear(y, P[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, P[p + "post_attention_layernorm.weight"], eps)
        g = linear(h, P[p + "mlp.gate_proj.weight"])
        u = linear(h, P[p + "mlp.up_proj.weight"])
        x = x + linear(F.silu(g) * u, P[p + "mlp.down_proj.weight"])
    x = rms_norm(x, P["model.norm.weight"], eps)
    return linear(x, P["model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"])


def loss_fn(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE)


# ----------------------------------------------------------------------------------------------
# Self-checks.

def check(cond, what):
    if not cond:
        sys.exit(f"make_fixtures.py: self-check FAILED: {what}")


def check_blocks():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 5, 3, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64)
    err = (causal_attention(q, k, v) - naive_attention(q, k, v)).abs().max().item()
    check(err < 1e-12, f"attention vs naive per-head loop, max err {err:.3g}")
    x = torch.linspace(-6, 6, 97, dtype=torch.float64)
    err_g = (gelu_tanh(x) - F.gelu(x, approximate="tanh")).abs().max().item()
    check(err_g < 1e-12, f"gelu_tanh vs torch, max err {err_g:.3g}")
    xs = torch.randn(3, 7, 48, generator=g, dtype=torch.float64)
    w = torch.randn(48, generator=g, dtype=torch.float64)
    b = torch.randn(48, generator=g, dtype=torch.float64)
    err_ln = (layer_norm(xs, w, b, 1e-5) - F.layer_norm(xs, (48,), w, b, 1e-5)).abs().max().item()
    check(err_ln < 1e-12, f"layer_norm vs torch, max err {err_ln:.3g}")
    # RoPE: <rope(q, m), rope(k, n)> depends only on m - n
    hd = 12
    cos, sin = rope_cos_sin(10, hd, 10000.0)
    a = torch.randn(hd, generator=g, dtype=torch.float64)
    c = torch.randn(hd, generator=g, dtype=torch.float64)
    ra, rc = apply_rope(a.expand(10, hd), cos, sin), apply_rope(c.expand(10, hd), cos, sin)
    d1 = (ra[7] * rc[4]).sum().item()
    d2 = (ra[3] * rc[0]).sum().item()
    check(abs(d1 - d2) < 1e-12, "RoPE is not relative-position invariant")
    print(f"  blocks: attention vs naive loop {err:.1e}, gelu {err_g:.1e}, layer_norm {err_ln:.1e}, "
          "rope relative ok")


def check_finite_differences(forward, P, ids, targets, picks):
    worst = 0.0
    for name, idx in picks:
        analytic = P[name].grad[idx].item()
        h = 1e-5  # central difference: truncation ~h^2, roundoff ~1e-16*loss/h, both ~1e-10
        with torch.no_grad():
            w = P[name]
            orig = w[idx].item()
            w[idx] = orig + h
            lp = loss_fn(forward(P, ids), targets).item()
            w[idx] = orig - h
            lm = loss_fn(forward(P, ids), targets).item()
            w[idx] = orig
        numeric = (lp - lm) / (2 * h)
        err = abs(analytic - numeric)
        worst = max(worst, err / (1e-8 + abs(numeric)))
        check(err < 1e-8 + 1e-6 * abs(numeric), f"finite difference {name}{list(idx)}: analytic {analytic:.10g} "
                          f"numeric {numeric:.10g} err {err:.3g}")
    print(f"  finite differences: {len(picks)} elements, worst |err|/(1e-8+|fd|) {worst:.1e}")


# ----------------------------------------------------------------------------------------------
# Fixture.

def tensor_json(t):
    # float64 values; json writes repr, the shortest decimal that round-trips the double
    return {"shape": list(t.shape), "data": t.detach().reshape(-1).tolist()}


def make_batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    targets = torch.randint(0, vocab, (B, T), generator=g)
    targets[0, 4] = IGNORE
    targets[1, T - 1] = IGNORE
    return ids, targets


def build(name, cfg, init_fn, forward_fn, vocab, seed, fd_picks):
    print(f"{name}:")
    P = init_fn(cfg, seed)
    forward = lambda params, ids: forward_fn(cfg, params, ids)  # noqa: E731
    ids, targets = make_batch(vocab, seed + 1)
    for t in P.values():
        check(torch.equal(t.float().double(), t.detach()), "params must be float32-valued")
    params_json = {k: tensor_json(v) for k, v in P.items()}

    logits = forward(P, ids)
    loss = loss_fn(logits, targets)
    loss.backward()
    grads_json = {k: tensor_json(v.grad) for k, v in P.items()}
    check_finite_differences(forward, P, ids, targets, fd_picks(ids))

    decay = [k for k, v in P.items() if v.dim() >= 2]
    no_decay = [k for k, v in P.items() if v.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": [P[k] for k in decay], "weight_decay": ADAMW["weight_decay"]},
         {"params": [P[k] for k in no_decay], "weight_decay": 0.0}],
        lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"], foreach=False)
    step_losses = []
    for _ in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=True)
        step_loss = loss_fn(forward(P, ids), targets)
        step_losses.append(step_loss.item())
        step_loss.backward()
        opt.step()
    check(step_losses[0] == loss.item(), "first step loss must equal the recorded loss")

    n_params = sum(v.numel() for v in P.values())
    max_grad = max(abs(x) for g in grads_json.values() for x in g["data"])
    print(f"  params {n_params}, loss {loss.item():.6f}, max |grad| {max_grad:.4g}, "
          f"step losses {', '.join(f'{x:.6f}' for x in step_losses)}")
    return {
        "name": name,
        "config": cfg,
        "input_ids": ids.tolist(),
        "targets": targets.tolist(),
        "params": params_json,
        "logits": tensor_json(logits),
        "loss": loss.item(),
        "grads": grads_json,
        "adamw": {**ADAMW, "decay": decay},
        "step_losses": step_losses,
        "params_after": {k: tensor_json(v) for k, v in P.items()},
    }


def float32_rerun(fx, forward_fn):
    """Redo the fixture in float32 (what a correct float32 C++ engine computes) and print how far it
    lands from the float64 reference: the basis for the tolerances in tests/fixtures/models/README.md."""
    cfg = fx["config"]
    P = {k: torch.tensor(v["data"], dtype=torch.float32).view(v["shape"]).requires_grad_(True)
         for k, v in fx["params"].items()}
    ids, targets = torch.tensor(fx["input_ids"]), torch.tensor(fx["targets"])
    ref = lambda x: torch.tensor(x["data"], dtype=torch.float64)  # noqa: E731
    global rope_cos_sin
    rope64 = rope_cos_sin
    rope_cos_sin = lambda *a: tuple(t.float() for t in rope64(*a))  # noqa: E731
    try:
        logits = forward_fn(cfg, P, ids)
        loss = loss_fn(logits, targets)
        loss.backward()
        e_logits = (logits.detach().double().reshape(-1) - ref(fx["logits"])).abs().max().item()
        e_grad = max((P[k].grad.double().reshape(-1) - ref(v)).abs().max().item()
                     for k, v in fx["grads"].items())
        decay = set(fx["adamw"]["decay"])
        opt = torch.optim.AdamW(
            [{"params": [p for k, p in P.items() if k in decay], "weight_decay": ADAMW["weight_decay"]},
             {"params": [p for k, p in P.items() if k not in decay], "weight_decay": 0.0}],
            lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"], foreach=False)
        losses = []
        for _ in range(ADAMW["steps"]):
            opt.zero_grad(set_to_none=True)
            step_loss = loss_fn(forward_fn(cfg, P, ids), targets)
            losses.append(step_loss.item())
            step_loss.backward()
            opt.step()
    finally:
        rope_cos_sin = rope64
    e_loss = max(abs(a - b) / abs(b) for a, b in zip(losses, fx["step_losses"]))
    e_after = torch.cat([(P[k].detach().double().reshape(-1) - ref(v)).abs()
                         for k, v in fx["params_after"].items()])
    print(f"  float32 rerun vs reference: logits {e_logits:.1e} abs, loss {e_loss:.1e} rel, "
          f"grads {e_grad:.1e} abs, params_after {e_after.max().item():.1e} abs "
          f"({int((e_after > 1e-5).sum())} elements > 1e-5)")
    # Per tensor, the relative L2 distance of PyTorch's own float32 AdamW result from the float64 one:
    # Adam turns float32 round-off in near-zero gradients into lr-sized moves, so this is the yardstick
    # a float32 engine is held to for params_after (see the README).
    fx["params_after_f32_rel_l2"] = {
        k: ((P[k].detach().double().reshape(-1) - ref(v)).norm() / ref(v).norm()).item()
        for k, v in fx["params_after"].items()}


# ----------------------------------------------------------------------------------------------
# Hugging Face directories of the same weights.

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(fx):
    cfg = dict(fx["config"])
    if cfg["model_type"] == "gpt2":
        cfg.update({"architectures": ["GPT2LMHeadModel"], "n_ctx": cfg["n_positions"], "n_inner": None,
                    "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "initializer_range": 0.02,
                    "scale_attn_weights": True, "bos_token_id": 0, "eos_token_id": 0})
    elif cfg["model_type"] == "qwen3":
        cfg.update({"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                    "rope_scaling": None, "use_sliding_window": False, "sliding_window": None,
                    "max_window_layers": cfg["num_hidden_layers"], "initializer_range": 0.02,
                    "bos_token_id": 1, "eos_token_id": 2})
    else:
        cfg.update({"architectures": ["LlamaForCausalLM"], "attention_bias": False, "mlp_bias": False,
                    "rope_scaling": None, "pretraining_tp": 1, "initializer_range": 0.02,
                    "bos_token_id": 1, "eos_token_id": 2})
    cfg.update({"torch_dtype": "float32", "use_cache": True})
    return cfg


def safetensors_bytes(tensors):
    """tensors: {name: float32 torch tensor}. The format by hand, names in sorted order."""
    header = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        check(t.dtype == torch.float32, f"{name} must be float32")
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def write_hf_directory(fx, out_dir, root):
    os.makedirs(out_dir, exist_ok=True)
    gpt2 = fx["config"]["model_type"] == "gpt2"
    tensors = {}
    for name, v in fx["params"].items():
        t = torch.tensor(v["data"], dtype=torch.float64).view(v["shape"]).float()
        if gpt2 and name.endswith(GPT2_CONV1D):
            t = t.t()  # HF GPT-2 Conv1D: [in, out]
        tensors[name] = t
    check(fx["config"]["tie_word_embeddings"] != ("lm_head.weight" in tensors), "a tied model has no lm_head")
    files = {
        "config.json": (json.dumps(hf_config(fx), indent=2, sort_keys=True) + "\n").encode("utf-8"),
        "model.safetensors": safetensors_bytes(tensors),
        "expected_logits.json": (json.dumps({
            "source": f"tests/fixtures/models/{fx['name']}.json (float64 PyTorch reference)",
            "input_ids": fx["input_ids"],
            "max_abs_logit": max(abs(x) for x in fx["logits"]["data"]),
            "logits": fx["logits"]}, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8"),
    }
    for fname, data in files.items():
        path = os.path.join(out_dir, fname)
        with open(path, "wb") as f:
            f.write(data)
        print(f"wrote {os.path.relpath(path, root)} ({len(data)} bytes)")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = os.path.join(root, "tests", "fixtures", "models")
    os.makedirs(out_dir, exist_ok=True)
    check_blocks()

    def gpt2_picks(ids):
        return [("transformer.wte.weight", (int(ids[0, 0]), 2)),  # embedding and tied lm_head
                ("transformer.wpe.weight", (1, 4)),
                ("transformer.h.0.attn.c_attn.weight", (5, 7)),
                ("transformer.h.0.attn.c_attn.bias", (100,)),  # a v column
                ("transformer.h.1.ln_1.bias", (3,)),
                ("transformer.h.1.mlp.c_fc.weight", (17, 30)),
                ("transformer.ln_f.weight", (11,))]

    def llama_picks(ids):
        return [("model.embed_tokens.weight", (int(ids[1, 2]), 5)),
                ("model.layers.0.self_attn.q_proj.weight", (13, 9)),
                ("model.layers.0.self_attn.k_proj.weight", (20, 1)),
                ("model.layers.1.self_attn.v_proj.weight", (7, 40)),
                ("model.layers.0.input_layernorm.weight", (6,)),
                ("model.layers.1.mlp.gate_proj.weight", (33, 12)),
                ("model.norm.weight", (2,)),
                ("lm_head.weight", (50, 10))]

    def qwen3_picks(ids):
        return [("model.embed_tokens.weight", (int(ids[0, 3]), 7)),  # embedding and tied lm_head
                ("model.layers.0.self_attn.q_proj.weight", (30, 4)),
                ("model.layers.0.self_attn.q_norm.weight", (5,)),
                ("model.layers.1.self_attn.k_norm.weight", (11,)),
                ("model.layers.1.self_attn.k_proj.weight", (17, 20)),
                ("model.layers.0.self_attn.o_proj.weight", (9, 40)),
                ("model.layers.1.mlp.down_proj.weight", (3, 50)),
                ("model.norm.weight", (31,))]

    fixtures = [
        build("gpt2_tiny", GPT2_CONFIG, gpt2_init, gpt2_forward, GPT2_CONFIG["vocab_size"],
              1234, gpt2_picks),
        build("llama_tiny", LLAMA_CONFIG, llama_init, llama_forward, LLAMA_CONFIG["vocab_size"],
              5678, llama_picks),
        build("qwen3_tiny", QWEN3_CONFIG, llama_init, llama_forward, QWEN3_CONFIG["vocab_size"],
              9012, qwen3_picks),
    ]
    for fx, fw in zip(fixtures, (gpt2_forward, llama_forward, llama_forward)):
        print(fx["name"] + ":")
        float32_rerun(fx, fw)
    for fx in fixtures:
        path = os.path.join(out_dir, fx["name"] + ".json")
        with open(path, "w") as f:
            json.dump(fx, f, separators=(",", ":"), allow_nan=False)
            f.write("\n")
        print(f"wrote {os.path.relpath(path, root)} ({os.path.getsize(path)} bytes)")
    for fx in fixtures:
        write_hf_directory(fx, os.path.join(root, "tests", "fixtures", "hf", fx["name"]), root)


if __name__ == "__main__":
    main()
