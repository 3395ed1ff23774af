// Causal scaled-dot-product attention for the CPU, flash style: keys are processed in tiles with an
// online softmax, so memory is linear in T (no T×T matrix); backward recomputes the probabilities.
#pragma once
#include <cstdint>

namespace llm::cpu {

struct AttentionShape {
  int64_t B;    // batch
  int64_t T;    // sequence length (queries and keys)
  int64_t Hq;   // query heads
  int64_t Hkv;  // key/value heads; Hq % Hkv == 0 and query head h reads kv head h / (Hq / Hkv)
  int64_t D;    // head dimension
  int64_t window = 0;  // sliding window (Mistral): query t also needs key s > t - window; 0: unlimited
  // Elements from one token's row to the next in q and dq, and in k, v, dk and dv: views into a fused
  // qkv tensor (and its gradient) need no copies. 0: dense (Hq·D and Hkv·D). out, dout, lse are dense.
  int64_t q_stride = 0;
  int64_t kv_stride = 0;
  int64_t q_row_stride() const { return q_stride ? q_stride : Hq * D; }
  int64_t kv_row_stride() const { return kv_stride ? kv_stride : Hkv * D; }
};

// Layouts (row-major): q, out, dout, dq: [B, T, Hq, D]; k, v, dk, dv: [B, T, Hkv, D] (q, dq, k, v, dk,
// dv with the shape's token strides; only the rows' H·D elements are read or written); lse: [B, Hq, T] (natural-log sum of exp of the scaled scores, saved for backward).
// doc: optional [B, T] segment ids for packed sequences: each maximal run of equal ids is one
// document, and query t attends to key s iff s <= t and s lies in t's run (null: plain causal). An id
// that reappears after a different one starts a new document.
// scale is usually 1/sqrt(D).
void attention_forward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                       const int32_t* doc, float scale, float* out, float* lse);

// Gradients of attention_forward; dq, dk, dv are overwritten (not accumulated).
void attention_backward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                        const int32_t* doc, float scale, const float* out, const float* lse,
                        const float* dout, float* dq, float* dk, float* dv);

}  // namespace llm::cpu

namespace llm::cpu {

// Inference attention over a KV cache (no backward). q, out: [B, Tq, Hq, D]; k_cache, v_cache:
// [B, S, Hkv, D] with S the cache capacity; past[b] is how many tokens row b had cached before these
// queries. Query t of row b is at position p = past[b] + t and attends to cache slots 0 .. p (with a
// sliding window > 0, only the last `window` of them: p - window + 1 .. p),
// whose keys and values (its own included) must already be written (slots past S are never read:
// a padding query beyond the capacity sees slots 0 .. S-1).
// Every (row, query, head) is computed independently, so results do not depend on the thread count.
void attention_cached_forward(int64_t B, int64_t Tq, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, const float* q,
                              const float* k_cache, const float* v_cache, const int32_t* past, float scale, float* out,
                              int64_t window = 0);

}  // namespace llm::cpu
