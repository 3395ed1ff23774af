#!/usr/bin/python3
"""Writes LoRA adapter fixtures in Hugging Face PEFT's layout for the tiny HF models of
scripts/make_fixtures.py, with PyTorch's float64 logits of base model + adapter.

Run (from the repository root, with Debian's python3-torch):

    /usr/bin/python3 scripts/make_lora_fixtures.py

It reads tests/fixtures/models/{llama_tiny,gpt2_tiny}.json (the base weights, nn.Linear orientation)
and writes tests/fixtures/lora/{llama_tiny,gpt2_tiny}/ with
  adapter_config.json        as PEFT writes it (peft_type LORA, r, lora_alpha, target_modules, ...)
  adapter_model.safetensors  "base_model.model.<module>.lora_A.weight" [r, in] and ".lora_B.weight"
                             [out, r], float32, sorted names (PEFT's keys)
  expected_logits.json       the base fixture's input_ids and the float64 logits of the adapted model
The files are committed; the C++ tests and the llm-convert --merge-lora ctest read them.

PEFT semantics reproduced here: a targeted Linear computes W x + b + scale * B (A x) with
scale = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora). A and B are nn.Linear weights in PEFT
for GPT-2's Conv1D layers as well (only the base weight is stored [in, out]), so in [out, in]
orientation the adapted weight is W + scale * B @ A for both families. The reference applies that
update in float64 to the base weights and runs make_fixtures.py's forward; target matching is PEFT's
(the module path equals the target or ends with "." + target).
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

ADAPTERS = [
    # name, forward, PEFT config, seed
    ("llama_tiny", mf.llama_forward,
     {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "use_rslora": False}, 11),
    # GPT-2: the fused c_attn and both c_proj (attention and MLP), rank-stabilized scaling.
    ("gpt2_tiny", mf.gpt2_forward,
     {"r": 2, "lora_alpha": 4, "target_modules": ["c_attn", "c_proj"], "use_rslora": True}, 12),
]


def targeted(module, targets):
    return any(module == t or module.endswith("." + t) for t in targets)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, forward, cfg, seed in ADAPTERS:
        with open(os.path.join(root, "tests", "fixtures", "models", name + ".json")) as f:
            fx = json.load(f)
        P = {k: torch.tensor(v["data"], dtype=torch.float64).view(v["shape"]) for k, v in fx["params"].items()}
        gen = torch.Generator().manual_seed(seed)
        r = cfg["r"]
        scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg["use_rslora"] else r)
        tensors = {}
        for pname in sorted(P):
            module = pname[: -len(".weight")]
            if not pname.endswith(".weight") or P[pname].dim() != 2 or "wte" in module or "wpe" in module \
                    or "embed_tokens" in module or not targeted(module, cfg["target_modules"]):
                continue
            out_f, in_f = P[pname].shape
            A = (torch.randn(r, in_f, generator=gen) * 0.1).float()
            B = (torch.randn(out_f, r, generator=gen) * 0.1).float()
            tensors[f"base_model.model.{module}.lora_A.weight"] = A
            tensors[f"base_model.model.{module}.lora_B.weight"] = B
            P[pname] = P[pname] + scale * (B.double() @ A.double())
        ids = torch.tensor(fx["input_ids"])
        with torch.no_grad():
            logits = forward(fx["config"], P, ids)
        base = torch.tensor(fx["logits"]["data"], dtype=torch.float64)
        change = (logits.reshape(-1) - base).abs().max().item()
        mf.check(change > 0.05, f"{name}: the adapter should change the logits (max change {change})")

        config = {
            "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": f"tests/fixtures/hf/{name}",
            "bias": "none", "fan_in_fan_out": name.startswith("gpt2"), "inference_mode": True,
            "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
            "lora_alpha": cfg["lora_alpha"], "lora_dropout": 0.05, "modules_to_save": None, "peft_type": "LORA",
            "r": r, "rank_pattern": {}, "revision": None, "target_modules": cfg["target_modules"],
            "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": cfg["use_rslora"],
        }
        out_dir = os.path.join(root, "tests", "fixtures", "lora", name)
        os.makedirs(out_dir, exist_ok=True)
        files = {
            "adapter_config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"),
            "adapter_model.safetensors": mf.safetensors_bytes(tensors),
            "expected_logits.json": (json.dumps({
                "source": f"scripts/make_lora_fixtures.py: tests/fixtures/hf/{name} + this adapter (float64)",
                "input_ids": fx["input_ids"],
                "max_abs_logit": logits.abs().max().item(),
                "logits": {"shape": list(logits.shape), "data": logits.reshape(-1).tolist()}},
                separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8"),
        }
        for fname, data in files.items():
            path = os.path.join(out_dir, fname)
            with open(path, "wb") as f:
                f.write(data)
            print(f"wrote {os.path.relpath(path, root)} ({len(data)} bytes)")
        print(f"  {len(tensors) // 2} adapted modules, scale {scale:.4g}, logits change by up to {change:.3g}")


if __name__ == "__main__":
    main()
