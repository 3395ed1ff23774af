#include "engine/io/llama2c.h"


#include <cerrno>
#include <cstring>
#include <filesystem>

#include "engine/core/error.h"
#include "engine/io/mapped_file.h"

namespace llm::io {

namespace fs = std::filesystem;

namespace {
struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};
constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);

uint64_t mul(uint64_t a, uint64_t b, const std::string& path) {
  uint64_t r = 0;
  LLM_CHECK(!__builtin_mul_overflow(a, b, &r), path, ": llama2.c header describes an impossibly large model");
  return r;
}

// Checks the header fields and returns the number of float32 values that must follow it.
uint64_t expected_floats(const Header& h, const std::string& path) {
  auto positive = [&](int64_t v, const char* name) {
    LLM_CHECK(v > 0, path, ": llama2.c header: ", name, " must be positive, got ", v);
  };
  positive(h.dim, "dim");
  positive(h.hidden_dim, "hidden_dim");
  positive(h.n_layers, "n_layers");
  positive(h.n_heads, "n_heads");
  positive(h.n_kv_heads, "n_kv_heads");
  LLM_CHECK(h.vocab_size != 0 && h.vocab_size != INT32_MIN, path, ": llama2.c header: vocab_size ", h.vocab_size, " is invalid");
  positive(h.seq_len, "seq_len");
  LLM_CHECK(h.dim % h.n_heads == 0, path, ": llama2.c header: dim ", h.dim, " is not a multiple of n_heads ", h.n_heads);
  LLM_CHECK(h.n_heads % h.n_kv_heads == 0, path, ": llama2.c header: n_heads ", h.n_heads,
            " is not a multiple of n_kv_heads ", h.n_kv_heads);
  const uint64_t D = h.dim, F = h.hidden_dim, L = h.n_layers, S = h.seq_len;
  const uint64_t V = static_cast<uint64_t>(h.vocab_size < 0 ? -static_cast<int64_t>(h.vocab_size) : h.vocab_size);
  const uint64_t hd = D / static_cast<uint64_t>(h.n_heads), kv = hd * static_cast<uint64_t>(h.n_kv_heads);
  LLM_CHECK(hd % 2 == 0, path, ": llama2.c header: head size ", hd, " must be even for RoPE");
  uint64_t n = mul(V, D, path);                           // token embedding
  n += mul(L, D, path);                                   // rms_att_weight
  n += mul(L, mul(D, D, path), path);                     // wq
  n += mul(2 * L, mul(kv, D, path), path);                // wk, wv
  n += mul(L, mul(D, D, path), path);                     // wo
  n += mul(L, D, path);                                   // rms_ffn_weight
  n += mul(3 * L, mul(F, D, path), path);                 // w1, w2, w3
  n += D;                                                 // rms_final_weight
  n += mul(S, hd, path);                                  // freq_cis_real + freq_cis_imag (S·hd/2 each)
  if (h.vocab_size < 0) n += mul(V, D, path);             // wcls
  return n;
}

Header read_header(const uint8_t* p) {
  Header h{};
  std::memcpy(&h, p, kHeaderBytes);
  return h;
}

// Rows of a [heads·hd, in] matrix from llama2.c's (x[2i], x[2i+1]) pairs to HF's (x[i], x[i+hd/2]):
// new row h·hd + j·hd/2 + i = old row h·hd + 2i + j (transformers' convert_llama_weights_to_hf).
Tensor permute_rope_rows(const float* src, int64_t heads, int64_t hd, int64_t in) {
  Tensor out = Tensor::empty(Shape{heads * hd, in});
  float* dst = out.data<float>();
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(dst + (h * hd + j * (hd / 2) + i) * in, src + (h * hd + 2 * i + j) * in,
                    static_cast<size_t>(in) * sizeof(float));
  return out;
}

std::string tokenizer_next_to(const fs::path& file) {
  const fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  const std::string spec = tokenizer_spec_in(dir.string());
  if (!spec.empty()) return spec;
  std::string found;
  int count = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_regular_file() && entry.path().extension() == ".model") {
      found = entry.path().string();
      ++count;
    }
  return count == 1 ? found : "";
}
}  // namespace

bool is_llama2c_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  const uint64_t size = fs::file_size(path, ec);
  if (ec || size < kHeaderBytes) return false;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  uint8_t buf[kHeaderBytes];
  const bool ok = std::fread(buf, 1, kHeaderBytes, f) == kHeaderBytes;
  std::fclose(f);
  if (!ok) return false;
  try {
    return kHeaderBytes + mul(4, expected_floats(read_header(buf), path), path) == size;
  } catch (const Error&) {
    return false;
  }
}

LoadedModel load_llama2c(const std::string& path) {
  const std::shared_ptr<MappedFile> map =
      map_file(path, "llama2.c checkpoint", kHeaderBytes, "the header alone is " + std::to_string(kHeaderBytes));
  const size_t size = map->size;
  void* addr = map->addr;
  const auto* bytes = static_cast<const uint8_t*>(addr);
  const Header h = read_header(bytes);
  const uint64_t want = kHeaderBytes + mul(4, expected_floats(h, path), path);
  LLM_CHECK(size == want, path, ": llama2.c header (dim ", h.dim, ", hidden_dim ", h.hidden_dim, ", n_layers ", h.n_layers,
            ", n_heads ", h.n_heads, ", n_kv_heads ", h.n_kv_heads, ", vocab_size ", h.vocab_size, ", seq_len ", h.seq_len,
            ") needs ", want, " bytes but the file has ", size, size < want ? " (truncated)" : " (inconsistent header)");

  LoadedModel out;
  models::ModelConfig& c = out.config;
  c.arch = models::Arch::Llama;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size < 0 ? -static_cast<int64_t>(h.vocab_size) : h.vocab_size;
  c.max_seq_len = h.seq_len;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.f;
  c.tie_embeddings = h.vocab_size > 0;
  c.attention_bias = false;
  c.validate();

  const int64_t D = c.dim, F = c.hidden_dim, L = c.n_layers, V = c.vocab_size, hd = c.head_dim();
  const int64_t kv = c.n_kv_heads * hd;
  float* p = reinterpret_cast<float*>(static_cast<uint8_t*>(addr) + kHeaderBytes);  // 28 bytes: 4-aligned
  // Zero-copy views into the mapping for everything that needs no reordering.
  auto take = [&](const Shape& shape) {
    Tensor t = Tensor::from_blob(p, shape, DType::F32, Device::cpu(), map);
    p += shape.numel();
    return t;
  };
  auto layer = [](int64_t i, const char* name) { return "model.layers." + std::to_string(i) + "." + name; };
  auto& w = out.weights;
  w["model.embed_tokens.weight"] = take(Shape{V, D});
  for (int64_t i = 0; i < L; ++i) w[layer(i, "input_layernorm.weight")] = take(Shape{D});
  for (int64_t i = 0; i < L; ++i) {
    w[layer(i, "self_attn.q_proj.weight")] = permute_rope_rows(p, c.n_heads, hd, D);
    p += D * D;
  }
  for (int64_t i = 0; i < L; ++i) {
    w[layer(i, "self_attn.k_proj.weight")] = permute_rope_rows(p, c.n_kv_heads, hd, D);
    p += kv * D;
  }
  for (int64_t i = 0; i < L; ++i) w[layer(i, "self_attn.v_proj.weight")] = take(Shape{kv, D});
  for (int64_t i = 0; i < L; ++i) w[layer(i, "self_attn.o_proj.weight")] = take(Shape{D, D});
  for (int64_t i = 0; i < L; ++i) w[layer(i, "post_attention_layernorm.weight")] = take(Shape{D});
  for (int64_t i = 0; i < L; ++i) w[layer(i, "mlp.gate_proj.weight")] = take(Shape{F, D});
  for (int64_t i = 0; i < L; ++i) w[layer(i, "mlp.down_proj.weight")] = take(Shape{D, F});
  for (int64_t i = 0; i < L; ++i) w[layer(i, "mlp.up_proj.weight")] = take(Shape{F, D});
  w["model.norm.weight"] = take(Shape{D});
  p += c.max_seq_len * hd;  // the two legacy freq_cis tables, seq_len·hd/2 floats each
  if (!c.tie_embeddings) w["lm_head.weight"] = take(Shape{V, D});
  check_weights(c, w, path);
  out.tokenizer = tokenizer_next_to(fs::path(path));
  return out;
}

}  // namespace llm::io
