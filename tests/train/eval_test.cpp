// Evaluation: the sliding-window plan (every token scored exactly once when windows overlap),
// perplexity of the real stories260K model on a short story against a computation by hand with
// ops::cross_entropy, and logits for token ids written to .npy against model->forward.
#include "engine/train/eval.h"

#include <cmath>
#include <fstream>

#include "engine/core/error.h"
#include "engine/io/npy.h"
#include "engine/ops/ops.h"
#include "engine/train/pretrained.h"
#include "tests/common/testing.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "dog, Max. One day, Lily saw a big red ball under a tree. She ran to the ball and kicked it. Max barked "
    "and ran after it. Lily laughed and said, \"Max, you are so fast!\" They played all day until the sun "
    "went down. Then they went home and ate dinner with Mom.";

std::string s260(const std::string& name) { return std::string(LLM_SOURCE_DIR) + "/tests/fixtures/stories260K/" + name; }
std::string tok512() { return std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model"; }

// How often each token is scored by the plan.
std::vector<int> coverage(int64_t n, const std::vector<train::EvalWindow>& windows) {
  std::vector<int> count(static_cast<size_t>(n), 0);
  for (const auto& w : windows)
    for (int64_t t = w.score_begin; t < w.end; ++t) ++count[static_cast<size_t>(t)];
  return count;
}

TEST(EvalWindows, OverlappingWindowsScoreEveryTokenButTheFirstExactlyOnce) {
  for (int64_t n : {2, 3, 17, 100, 257})
    for (int64_t seq_len : {2, 3, 8, 16, 300})
      for (int64_t stride = 1; stride <= seq_len && stride <= 20; ++stride) {
        SCOPED_TRACE("n " + std::to_string(n) + " seq_len " + std::to_string(seq_len) + " stride " + std::to_string(stride));
        const auto windows = train::plan_eval_windows(n, seq_len, stride);
        ASSERT_FALSE(windows.empty());
        for (size_t i = 0; i < windows.size(); ++i) {
          EXPECT_EQ(windows[i].begin, static_cast<int64_t>(i) * stride);
          EXPECT_LE(windows[i].end - windows[i].begin, seq_len);
          EXPECT_GT(windows[i].score_begin, windows[i].begin);  // a window's first token has no context
          if (i + 1 < windows.size()) {
            EXPECT_EQ(windows[i].end - windows[i].begin, seq_len);
          } else {
            EXPECT_EQ(windows[i].end, n);
          }
        }
        const std::vector<int> count = coverage(n, windows);
        EXPECT_EQ(count[0], 0);
        for (int64_t t = 1; t < n; ++t) {
          // Without overlap (stride == seq_len) a window's first token is not scored (HF's guide).
          const bool window_start = stride == seq_len && t % stride == 0;
          EXPECT_EQ(count[static_cast<size_t>(t)], window_start ? 0 : 1) << "token " << t;
        }
      }
}

TEST(EvalWindows, HuggingFaceExample) {
  // 10 tokens, windows of 4 moving by 2: [0,4) scores 1..3, [2,6) scores 4,5, [4,8) 6,7, [6,10) 8,9.
  const auto w = train::plan_eval_windows(10, 4, 2);
  ASSERT_EQ(w.size(), 4u);
  EXPECT_EQ(w[1].begin, 2);
  EXPECT_EQ(w[1].end, 6);
  EXPECT_EQ(w[1].score_begin, 4);
  EXPECT_EQ(w[3].end, 10);
  EXPECT_EQ(w[3].score_begin, 8);
  EXPECT_THROW(train::plan_eval_windows(1, 4, 2), Error);
  EXPECT_THROW(train::plan_eval_windows(10, 4, 5), Error);
  EXPECT_THROW(train::plan_eval_windows(10, 4, 0), Error);
  EXPECT_THROW(train::plan_eval_windows(10, 1, 1), Error);
}

// Sum of -log p over the tokens each window scores, computed independently: the HF guide's loop
// (trg_len = end - prev_end, earlier labels set to -100) with one forward per window and
// ops::cross_entropy (a mean, times the number of scored labels).
std::pair<double, int64_t> nll_by_hand(models::CausalLM& model, const std::vector<int32_t>& ids, int64_t seq_len,
                                       int64_t stride) {
  const int64_t n = static_cast<int64_t>(ids.size());
  double sum = 0;
  int64_t scored = 0, prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + seq_len, n), trg_len = end - prev_end, L = end - begin;
    std::vector<int32_t> input(ids.begin() + begin, ids.begin() + end), labels(input);
    for (int64_t i = 0; i < L - trg_len; ++i) labels[static_cast<size_t>(i)] = -100;
    // shift: logits at position i predict label i + 1
    std::vector<int32_t> targets(labels.begin() + 1, labels.end());
    int64_t count = 0;
    for (int32_t t : targets) count += t != -100;
    if (count > 0) {
      const Tensor logits = model.forward(Tensor::from_vector(input, Shape{1, L}));
      const Tensor head = logits.slice(1, 0, L - 1).contiguous();
      const double mean = ops::cross_entropy(head, Tensor::from_vector(targets, Shape{1, L - 1})).item();
      sum += mean * static_cast<double>(count);
      scored += count;
    }
    prev_end = end;
    if (end == n) break;
  }
  return {sum, scored};
}

TEST(Perplexity, Stories260KMatchesAComputationByHand) {
  const auto tokenizer = data::load_tokenizer(tok512());
  const std::vector<int32_t> ids = train::encode_for_eval(*tokenizer, kStory);
  ASSERT_EQ(ids[0], tokenizer->bos_id());
  const int64_t n = static_cast<int64_t>(ids.size());
  ASSERT_GT(n, 60);
  auto model = train::load_model(s260("stories260K.bin"));
  NoGradGuard no_grad;
  for (const auto& [seq_len, stride] : std::vector<std::pair<int64_t, int64_t>>{{32, 16}, {32, 32}, {24, 5}, {512, 512}}) {
    SCOPED_TRACE("seq_len " + std::to_string(seq_len) + " stride " + std::to_string(stride));
    train::PerplexityOptions options;
    options.seq_len = seq_len;
    options.stride = stride;
    int64_t calls = 0;
    const train::PerplexityResult r = train::evaluate_perplexity(*model, ids, options, [&](int64_t, int64_t) { ++calls; });
    const auto [sum, scored] = nll_by_hand(*model, ids, seq_len, stride);
    EXPECT_EQ(r.scored, scored);
    EXPECT_EQ(calls, r.windows);
    EXPECT_EQ(r.tokens, n);
    EXPECT_NEAR(r.nll_sum, sum, 1e-5 * sum);
    EXPECT_NEAR(r.loss, sum / static_cast<double>(scored), 1e-5);
    EXPECT_NEAR(r.perplexity, std::exp(r.loss), 1e-9 * r.perplexity);
    if (stride < seq_len) {
      EXPECT_EQ(r.scored, n - 1);
    }
    // A trained story model finds a simple story far likelier than chance (perplexity 512).
    EXPECT_GT(r.perplexity, 1.0);
    EXPECT_LT(r.perplexity, 10.0);
  }
  // One window over everything: the plain mean cross-entropy of the whole sequence.
  train::PerplexityResult whole = train::evaluate_perplexity(*model, ids);
  EXPECT_EQ(whole.windows, 1);
  EXPECT_EQ(whole.seq_len, 512);
  const Tensor logits = model->forward(Tensor::from_vector(ids, Shape{1, n}));
  const std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  const double mean = ops::cross_entropy(logits.slice(1, 0, n - 1).contiguous(), Tensor::from_vector(targets, Shape{1, n - 1})).item();
  EXPECT_NEAR(whole.loss, mean, 1e-5);
  EXPECT_THROW(train::evaluate_perplexity(*model, {1}), Error);
  train::PerplexityOptions too_long;
  too_long.seq_len = 513;
  EXPECT_THROW(train::evaluate_perplexity(*model, ids, too_long), Error);
}

TEST(Logits, WrittenNpyMatchesTheModelsForward) {
  TempDir dir("eval_logits");
  // The tiny LLaMA as an HF directory without tokenizer files is fine for token ids.
  auto model = train::load_model(std::string(LLM_SOURCE_DIR) + "/tests/fixtures/hf/llama_tiny");
  const int64_t B = 3, T = 13, V = model->config().vocab_size;
  const std::vector<int32_t> ids = random_ints(B * T, 11, 0, static_cast<int32_t>(V));
  io::write_npy(dir / "tokens.npy", Tensor::from_vector(ids, Shape{B, T}));
  const Shape shape = train::write_logits_npy(*model, dir / "tokens.npy", dir / "logits.npy");
  EXPECT_EQ(shape, (Shape{B, T, V}));
  const Tensor got = io::read_npy(dir / "logits.npy");
  ASSERT_EQ(got.shape(), (Shape{B, T, V}));
  NoGradGuard no_grad;
  const std::vector<float> want = model->forward(Tensor::from_vector(ids, Shape{B, T})).contiguous().to_vector<float>();
  EXPECT_REL_NEAR(got.to_vector<float>(), want, 1e-5);
  EXPECT_EQ(train::logits_for_ids(*model, Tensor::from_vector(ids, Shape{B, T})).to_vector<float>(), got.to_vector<float>());

  // Bad inputs: one error naming the file; nothing is written.
  std::vector<int32_t> bad = ids;
  bad[5] = static_cast<int32_t>(V);
  io::write_npy(dir / "oov.npy", Tensor::from_vector(bad, Shape{B, T}));
  io::write_npy(dir / "long.npy", Tensor::from_vector(random_ints(17, 1, 0, 5), Shape{1, 17}));
  io::write_npy(dir / "float.npy", Tensor::from_vector(std::vector<float>{1, 2}, Shape{1, 2}));
  io::write_npy(dir / "flat.npy", Tensor::from_vector(std::vector<int32_t>{1, 2}, Shape{2}));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"oov.npy", "outside the model's vocabulary"}, {"long.npy", "exceed the model's context of 16"},
      {"float.npy", "int32 or int64"}, {"flat.npy", "shape [B, T]"}};
  for (const auto& [name, what] : cases) {
    try {
      train::write_logits_npy(*model, dir / name, dir / "out.npy");
      ADD_FAILURE() << name << ": no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(name), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
    EXPECT_FALSE(std::filesystem::exists(dir / "out.npy"));
  }
}

}  // namespace
}  // namespace llm::testing
