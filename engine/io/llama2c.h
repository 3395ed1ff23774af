// llama2.c's legacy checkpoint (.bin, as written by its export.py version 0 / run.c's reader): a header
// of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
// vocab_size means an untied classifier follows), then float32 weights in run.c's order. The file is
// memory-mapped; weights become LLaMA parameters with HF names, q/k rows permuted from llama2.c's
// adjacent-pair RoPE to HF's rotate_half layout.
#pragma once
#include <string>

#include "engine/io/hf_model.h"

namespace llm::io {

// Reads a llama2.c .bin. The tokenizer spec is the file's directory when it holds tokenizer files
// (data::load_tokenizer's list), else its single *.model file, else "". The file size must match
// the header exactly; errors name the file and what disagrees.
LoadedModel load_llama2c(const std::string& path);

// True when `path` looks like a llama2.c checkpoint: a regular file whose size matches its header.
bool is_llama2c_file(const std::string& path);

}  // namespace llm::io
