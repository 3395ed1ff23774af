// llm-bench: times the engine's kernels on the shapes a model really runs, against a ceiling.
//
//   llm-bench kernels [--threads N] [--json]
//   llm-bench train --config FILE.yaml [--batch B] [--seq T] [--steps N] [--threads N] [--zero] [--profile] [--json]
//   llm-bench generate [--shape llama-110m|gpt2-124m] [--prompt P] [--gen G] [--threads N] [--json]
//   llm-bench allreduce [--backend auto|mpi|nccl] [--json]     (under mpirun -np N for N > 1)
//   llm-bench cuda [SECTION...]     (GPU kernels and training, CUDA builds: gemm attention attention_cached fused train)
//
// Under mpirun, `train` runs data parallel: --batch is per rank, the world size is a column, and
// only rank 0 prints. `train --profile` then runs two more steps under engine/core/profile.h and
// prints where their time went, per op (rank 0's).
//
// Each section (gemm, attention) is one function that measures its cases and hands rows to a Reporter,
// which prints either an aligned table or one JSON object per line.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/core/allocator.h"
#include "engine/core/profile.h"
#include "engine/dist/communicator.h"
#include "engine/dist/data_parallel.h"
#include "engine/models/transformer.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#if defined(LLM_HAVE_CUDA)
#include "tools/bench_cuda/bench_cuda.h"
#endif

#if defined(LLM_HAVE_OPENBLAS)
#include <cblas.h>
#endif
#if defined(LLM_BENCH_TRAIN)
#include <fstream>

#include "engine/train/trainer.h"
#endif

namespace {

struct Options {
  int threads = 0;  // 0: the OpenMP default
  bool json = false;
  // train
  std::string config;
  int64_t batch = 0, seq = 0;  // 0: the config's
  int steps = 5;
  bool zero = false;  // ZeRO-1 instead of AdamW + DataParallel
  bool profile = false;  // train: also print where two more steps spent their time
  // allreduce
  std::string backend = "auto";
  // generate
  std::string shape = "llama-110m";
  bool q8 = false;
  int64_t prompt = 128, gen = 128;
};

// One measured case. ref_gflops < 0 means no reference was measured.
struct Row {
  std::string op, shape, pass;
  double gflops = 0, ref_gflops = -1;
};

class Reporter {
 public:
  Reporter(const Options& options, int threads) : json_(options.json), threads_(threads) {}

  // Starts a section of the human table; JSON output has no headers.
  void section(const std::string& title, bool has_ref) {
    if (json_) return;
    std::printf("\n%s\n", title.c_str());
    std::printf("%-9s %-22s %-8s %12s", "op", "shape", "pass", "GFLOP/s");
    if (has_ref) std::printf(" %12s %8s", "ref GFLOP/s", "ratio");
    std::printf("\n");
  }

  void row(const Row& r) {
    if (json_) {
      std::printf("{\"op\":\"%s\",\"shape\":\"%s\",\"pass\":\"%s\",\"threads\":%d,\"gflops\":%.2f", r.op.c_str(),
                  r.shape.c_str(), r.pass.c_str(), threads_, r.gflops);
      if (r.ref_gflops >= 0) std::printf(",\"ref_gflops\":%.2f", r.ref_gflops);
      std::printf("}\n");
    } else {
      std::printf("%-9s %-22s %-8s %12.1f", r.op.c_str(), r.shape.c_str(), r.pass.c_str(), r.gflops);
      if (r.ref_gflops >= 0) std::printf(" %12.1f %7.1f%%", r.ref_gflops, 100.0 * r.gflops / r.ref_gflops);
      std::printf("\n");
    }
    std::fflush(stdout);
  }

 private:
  bool json_;
  int threads_;
};

void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(150)); }

// Seconds per call of `first` and of `second`, after warm-up, measured in alternating blocks of
// ~min_seconds/rounds each with a pause between blocks. Blocks, not call-by-call interleaving: an
// OpenMP or OpenBLAS thread pool keeps spinning for a while after its call and would steal the core
// from the other library's threads; the pause lets it go to sleep.
template <typename Fn1, typename Fn2>
void time_calls(Fn1&& first, Fn2&& second, std::vector<double>* first_times, std::vector<double>* second_times,
                int rounds = 3, double min_seconds = 0.6) {
  using clock = std::chrono::steady_clock;
  const auto block = [&](auto& fn, std::vector<double>* times) {
    settle();
    fn();  // warm-up: caches, page faults, thread pool start
    const auto start = clock::now();
    for (int n = 0; n < 5 || std::chrono::duration<double>(clock::now() - start).count() < min_seconds / rounds; ++n) {
      const auto t0 = clock::now();
      fn();
      times->push_back(std::chrono::duration<double>(clock::now() - t0).count());
      if (n >= 2000) break;
    }
  };
  for (int r = 0; r < rounds; ++r) {
    block(first, first_times);
    block(second, second_times);
  }
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

struct GemmCase {
  const char* pass;
  bool trans_a, trans_b;
  int64_t M, K, N;
};

// The GEMMs of one GPT-2 124M training step with 256 tokens: each Linear (K_fwd → N_fwd, weight
// stored N_fwd×K_fwd) runs forward x·Wᵀ, then backward dX = dY·W and dW = dYᵀ·X.
std::vector<GemmCase> gpt2_gemm_cases() {
  const int64_t tokens = 256;
  const int64_t linears[][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};  // {K_fwd, N_fwd}
  std::vector<GemmCase> cases;
  for (const auto& l : linears) cases.push_back({"forward", false, true, tokens, l[0], l[1]});
  for (const auto& l : linears) cases.push_back({"dX", false, false, tokens, l[1], l[0]});
  for (const auto& l : linears) cases.push_back({"dW", true, false, l[1], tokens, l[0]});
  return cases;
}

void bench_gemm(Reporter& reporter, int threads) {
  std::string title = std::string("sgemm  isa=") + llm::cpu::sgemm_isa() + "  threads=" + std::to_string(threads);
#if defined(LLM_HAVE_OPENBLAS)
  openblas_set_num_threads(threads);
  title += std::string("  ref=OpenBLAS (core ") + openblas_get_corename() + ")";
  const bool has_ref = true;
#else
  title += "  ref=none (OpenBLAS not found at build time)";
  const bool has_ref = false;
#endif
  reporter.section(title, has_ref);
  // Other processes on the cores make every number here (ours and the reference) unreliable.
  double load = 0;
  if (getloadavg(&load, 1) == 1 && load > 0.5)
    std::fprintf(stderr, "warning: load average %.1f before the run; other processes share the cores\n", load);

  for (const GemmCase& g : gpt2_gemm_cases()) {
    const int64_t lda = g.trans_a ? g.M : g.K, ldb = g.trans_b ? g.K : g.N, ldc = g.N;
    const std::vector<float> A = random_vector(size_t(g.M * g.K), 1), B = random_vector(size_t(g.K * g.N), 2);
    std::vector<float> C(size_t(g.M * g.N), 0.f);
    const double flop = 2.0 * double(g.M) * double(g.N) * double(g.K);

    Row row;
    row.op = "sgemm";
    row.pass = g.pass;
    row.shape = std::to_string(g.M) + "x" + std::to_string(g.K) + "x" + std::to_string(g.N) + " " +
                (g.trans_a ? "T" : "N") + (g.trans_b ? "T" : "N");
    const auto ours = [&] {
      llm::cpu::sgemm(g.trans_a, g.trans_b, g.M, g.N, g.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), ldc);
    };
    std::vector<double> our_times, ref_times;
#if defined(LLM_HAVE_OPENBLAS)
    const auto reference = [&] {
      cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans,
                  int(g.M), int(g.N), int(g.K), 1.f, A.data(), int(lda), B.data(), int(ldb), 0.f, C.data(), int(ldc));
    };
#endif
#if defined(LLM_HAVE_OPENBLAS)
    time_calls([&] { ours(); }, [&] { reference(); }, &our_times, &ref_times);
#else
    time_calls([&] { ours(); }, [] {}, &our_times, &ref_times, 1);
    ref_times.clear();
#endif
    row.gflops = flop / median(our_times) * 1e-9;
    if (!ref_times.empty()) row.ref_gflops = flop / median(ref_times) * 1e-9;
    reporter.row(row);
  }
}

// Causal attention at GPT-2 small's head geometry (B=4, H=12, D=64). FLOPs are counted as
// FlashAttention does: forward 4·B·H·T²·D / 2 (causal half), backward 2.5× that.
void bench_attention(Reporter& reporter, int threads) {
  reporter.section("attention (causal, flash-style)  threads=" + std::to_string(threads), false);
  for (const int64_t T : {64, 256, 1024}) {
    const llm::cpu::AttentionShape s{4, T, 12, 12, 64};
    const size_t n = size_t(s.B * s.T * s.Hq * s.D);
    const std::vector<float> q = random_vector(n, 1), k = random_vector(n, 2), v = random_vector(n, 3),
                             dout = random_vector(n, 4);
    std::vector<float> out(n), lse(size_t(s.B * s.Hq * s.T)), dq(n), dk(n), dv(n);
    const float scale = 0.125f;
    const auto forward = [&] {
      llm::cpu::attention_forward(s, q.data(), k.data(), v.data(), nullptr, scale, out.data(), lse.data());
    };
    const auto backward = [&] {
      llm::cpu::attention_backward(s, q.data(), k.data(), v.data(), nullptr, scale, out.data(), lse.data(),
                                   dout.data(), dq.data(), dk.data(), dv.data());
    };
    forward();  // backward reads out and lse
    std::vector<double> fwd_times, bwd_times;
    time_calls(forward, backward, &fwd_times, &bwd_times);
    const double fwd_flop = 4.0 * s.B * s.Hq * double(T) * double(T) * s.D / 2;
    const std::string shape = "B4 H12 T" + std::to_string(T) + " D64";
    reporter.row({"attention", shape, "forward", fwd_flop / median(fwd_times) * 1e-9});
    reporter.row({"attention", shape, "backward", 2.5 * fwd_flop / median(bwd_times) * 1e-9});
  }
}

// Sections of `llm-bench kernels`; a new kernel family adds one function here.
int run_kernels(const Options& options) {
  if (options.threads > 0) llm::cpu::set_num_threads(options.threads);
  const int threads = llm::cpu::num_threads();
  Reporter reporter(options, threads);
  bench_gemm(reporter, threads);
  bench_attention(reporter, threads);
  return 0;
}

#if defined(LLM_BENCH_TRAIN)
// Peak resident memory of this process (VmHWM), bytes.
size_t peak_rss() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      size_t kb = 0;
      status >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

// Whole training steps (forward, backward, clipping, AdamW) of the config's model on random tokens:
// the same llm::train::training_step the trainer runs.
int run_train(const Options& o) {
  if (o.config.empty()) return std::fprintf(stderr, "error: llm-bench train: --config is required\n"), 2;
  if (o.threads > 0) llm::cpu::set_num_threads(o.threads);
  std::vector<std::string> overrides;
  if (o.batch > 0) overrides.push_back("train.batch_size=" + std::to_string(o.batch));
  if (o.seq > 0) overrides.push_back("train.seq_len=" + std::to_string(o.seq));
  try {
    const llm::train::TrainConfig cfg = llm::train::load_train_config(o.config, overrides);
    if (cfg.vocab_from_data || cfg.model.vocab_size <= 0)
      throw llm::Error(o.config + ": model.vocab_size: the benchmark needs an explicit vocabulary size");
    llm::models::ModelConfig mc = cfg.model;
    if (mc.max_seq_len == 0) mc.max_seq_len = cfg.seq_len;
    auto model = llm::models::make_model(mc, cfg.seed);
    llm::optim::AdamWConfig oc;
    oc.weight_decay = cfg.weight_decay;
    const auto comm = llm::dist::make_communicator(cfg.dist_backend, cfg.timeout_s);
    const int world = comm->world_size();
    std::unique_ptr<llm::optim::AdamW> opt;
    std::unique_ptr<llm::dist::DataParallel> dp;
    std::unique_ptr<llm::optim::ZeroAdamW> zero;
    if (o.zero) {
      zero = std::make_unique<llm::optim::ZeroAdamW>(model->named_parameters(), oc, *comm);
    } else {
      opt = std::make_unique<llm::optim::AdamW>(model->named_parameters(), oc);
      dp = std::make_unique<llm::dist::DataParallel>(*comm, model->named_parameters(), cfg.bucket_mb);
    }
    const int64_t B = cfg.batch_size, T = cfg.seq_len;
    llm::Generator gen(cfg.seed + static_cast<uint64_t>(comm->rank()));  // each rank its own tokens
    std::vector<int32_t> ids(B * (T + 1));
    for (auto& x : ids) x = static_cast<int32_t>(gen.next_u64() % static_cast<uint64_t>(mc.vocab_size));
    std::vector<int32_t> in(B * T), out(B * T);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        in[b * T + t] = ids[b * (T + 1) + t];
        out[b * T + t] = ids[b * (T + 1) + t + 1];
      }
    const std::vector<llm::data::Batch> batch{{llm::Tensor::from_vector(in, llm::Shape{B, T}),
                                               llm::Tensor::from_vector(out, llm::Shape{B, T})}};
    const double ceiling = llm::train::measure_gemm_ceiling();
    std::vector<double> times, waits;  // waits: all-reduce time backward did not hide (0 with ZeRO: not split out)
    for (int i = 0; i < o.steps + 2; ++i) {  // two warm-up steps fill the allocator cache
      comm->barrier();  // every rank starts the step together, so a step's time is the slowest rank's
      const auto t0 = std::chrono::steady_clock::now();
      if (zero) llm::train::training_step(*model, *zero, batch, 1e-4f, cfg.grad_clip, nullptr);
      else llm::train::training_step(*model, *opt, batch, 1e-4f, cfg.grad_clip, nullptr, dp.get());
      if (i >= 2) {
        times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        waits.push_back(dp ? dp->last_wait_seconds() : 0.0);
      }
    }
    std::vector<llm::profile::Row> profile;
    constexpr int kProfiledSteps = 2;
    if (o.profile) {
      llm::profile::start(llm::Device::cpu());
      for (int i = 0; i < kProfiledSteps; ++i) {
        comm->barrier();
        llm::profile::mark("(between steps)");
        if (zero) llm::train::training_step(*model, *zero, batch, 1e-4f, cfg.grad_clip, nullptr);
        else llm::train::training_step(*model, *opt, batch, 1e-4f, cfg.grad_clip, nullptr, dp.get());
      }
      profile = llm::profile::stop();
    }
    // Rank 0's median step; the machine-wide ceiling is every rank's (they measured at once).
    const double s = median(times), wait = median(waits), tps = double(world * B * T) / s;
    const double world_ceiling = comm->all_reduce_value(ceiling, llm::dist::ReduceOp::Sum);
    const double mfu = mc.training_flops_per_token(T) * tps / world_ceiling;
    const double peak_gb = comm->all_reduce_value(double(peak_rss()) / (1 << 30), llm::dist::ReduceOp::Sum);
    const int threads = llm::cpu::num_threads();
    if (comm->rank() != 0) return 0;
    if (o.json) {
      std::printf("{\"op\":\"train\",\"model\":\"%s\",\"params\":%lld,\"world\":%d,\"zero\":%d,\"batch\":%lld,\"seq\":%lld,"
                  "\"threads\":%d,\"ms_per_step\":%.1f,\"ms_allreduce_wait\":%.1f,\"tokens_per_s\":%.1f,\"mfu\":%.4f,"
                  "\"ceiling_gflops\":%.1f,\"peak_rss_gb\":%.3f}\n",
                  mc.arch_name(), (long long)model->num_parameters(), world, o.zero ? 1 : 0, (long long)B, (long long)T, threads, s * 1e3,
                  wait * 1e3, tps, mfu, world_ceiling * 1e-9, peak_gb);
    } else {
      std::printf("train  %s  %lld parameters  world %d x threads %d%s  batch %lld x seq %lld per rank  (median of %d steps)\n",
                  mc.summary().c_str(), (long long)model->num_parameters(), world, threads, o.zero ? "  ZeRO-1" : "", (long long)B,
                  (long long)T, o.steps);
      std::printf("  %.1f ms/step (%.1f ms waiting for gradient all-reduce)  %.0f tokens/s  MFU %.1f%% of the %.0f GFLOP/s "
                  "GEMM ceiling  peak RSS %.2f GiB (all ranks)\n",
                  s * 1e3, wait * 1e3, tps, 100 * mfu, world_ceiling * 1e-9, peak_gb);
    }
    if (o.profile) {
      if (o.json) {
        for (const auto& r : profile)
          std::printf("{\"op\":\"train_profile\",\"name\":\"%s\",\"calls_per_step\":%.1f,\"ms_per_step\":%.3f}\n",
                      r.name.c_str(), double(r.calls) / kProfiledSteps, r.seconds * 1e3 / kProfiledSteps);
      } else {
        std::printf("  where the time goes (%d profiled steps, rank 0):\n%s", kProfiledSteps,
                    llm::profile::format(profile, kProfiledSteps).c_str());
      }
    }
  } catch (const llm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    llm::dist::abort_world(1);
    return 1;
  }
  return 0;
}
#endif

// Read bandwidth of this machine: the best of several streaming sums over a buffer far larger than
// the caches, GB/s (the best, as a capability, since other processes only ever lower it).
double measure_read_bandwidth(int threads) {
  const int64_t n = int64_t(1) << 28;  // 1 GiB of floats
  std::vector<float> buf(size_t(n), 1.f);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : s0, s1, s2, s3) schedule(static)
    for (int64_t i = 0; i < n; i += 4) {
      s0 += buf[size_t(i)], s1 += buf[size_t(i + 1)], s2 += buf[size_t(i + 2)], s3 += buf[size_t(i + 3)];
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    volatile float sink = s0 + s1 + s2 + s3;  // keeps the reads from being optimized away
    (void)sink;
    best = std::max(best, double(n) * 4 / secs * 1e-9);
  }
  return best;
}

// Decoding speed at batch 1 on random weights of a known shape: prompt tokens/s (one prefill pass),
// decode tokens/s (greedy, one token per step with the KV cache), time to first token, and the weight
// bandwidth decoding achieves against the machine's read bandwidth (decode reads every weight once per
// token, so that is its ceiling).
int run_generate(const Options& o) {
  if (o.threads > 0) llm::cpu::set_num_threads(o.threads);
  llm::models::ModelConfig c;
  if (o.shape == "llama-110m") {  // llama2.c stories110M: tied classifier
    c.arch = llm::models::Arch::Llama;
    c.vocab_size = 32000, c.max_seq_len = 1024, c.dim = 768, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12;
    c.hidden_dim = 2048, c.tie_embeddings = true;
  } else if (o.shape == "gpt2-124m") {
    c.arch = llm::models::Arch::GPT2;
    c.vocab_size = 50257, c.max_seq_len = 1024, c.dim = 768, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12;
    c.hidden_dim = 3072, c.tie_embeddings = true;
  } else {
    return std::fprintf(stderr, "error: llm-bench generate: --shape: expected llama-110m or gpt2-124m, got '%s'\n", o.shape.c_str()), 2;
  }
  if (o.prompt < 1 || o.prompt + o.gen > c.max_seq_len)
    return std::fprintf(stderr, "error: llm-bench generate: --prompt + --gen must fit the context of %lld\n", (long long)c.max_seq_len), 2;
  auto model = llm::models::make_model(c, 1);
  if (o.q8) model->quantize_q8();
  llm::NoGradGuard no_grad;
  const int threads = llm::cpu::num_threads();
  const double bandwidth = measure_read_bandwidth(threads);
  std::vector<double> prompt_tps, decode_tps, ttft;
  for (int rep = 0; rep < 3; ++rep) {
    llm::models::KVCache cache(c, 1, o.prompt + o.gen);
    std::vector<int32_t> ids(size_t(o.prompt));
    for (int64_t i = 0; i < o.prompt; ++i) ids[size_t(i)] = int32_t((i * 7919 + rep) % c.vocab_size);
    const auto t0 = std::chrono::steady_clock::now();
    llm::Tensor logits = model->forward_cached(llm::Tensor::from_vector(ids, llm::Shape{1, o.prompt}), {int32_t(o.prompt)}, cache);
    auto argmax = [&](const llm::Tensor& l) {
      const float* p = l.data<float>();
      return int32_t(std::max_element(p, p + c.vocab_size) - p);
    };
    int32_t next = argmax(logits);
    const double prefill = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    prompt_tps.push_back(double(o.prompt) / prefill);
    ttft.push_back(prefill);
    const auto t1 = std::chrono::steady_clock::now();
    for (int64_t g = 1; g < o.gen; ++g) {
      logits = model->forward_cached(llm::Tensor::from_vector(std::vector<int32_t>{next}, llm::Shape{1, 1}), {1}, cache);
      next = argmax(logits);
    }
    decode_tps.push_back(double(o.gen - 1) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
  }
  // Bytes of weights read per token: fp32, or Q8_0's 1 byte + a 4-byte scale per 32 values.
  const double bytes_per_weight = o.q8 ? 1.0 + 4.0 / 32 : 4.0;
  const double dec = median(decode_tps), weights_gb = double(model->num_parameters()) * bytes_per_weight * 1e-9;
  const double achieved = dec * weights_gb;
  if (o.json) {
    std::printf("{\"op\":\"generate\",\"shape\":\"%s\",\"weights\":\"%s\",\"params\":%lld,\"threads\":%d,\"prompt_tokens\":%lld,"
                "\"prompt_tokens_per_s\":%.1f,\"decode_tokens_per_s\":%.2f,\"ttft_ms\":%.1f,\"weight_gb_per_s\":%.2f,"
                "\"read_bandwidth_gb_per_s\":%.2f}\n",
                o.shape.c_str(), o.q8 ? "q8" : "fp32", (long long)model->num_parameters(), threads, (long long)o.prompt, median(prompt_tps), dec,
                median(ttft) * 1e3, achieved, bandwidth);
  } else {
    std::printf("generate  %s (%s, %lld parameters, %s)  threads %d  batch 1, prompt %lld, %lld new tokens (median of 3)\n",
                o.shape.c_str(), c.summary().c_str(), (long long)model->num_parameters(), o.q8 ? "q8" : "fp32", threads,
                (long long)o.prompt, (long long)o.gen);
    std::printf("  prompt %.1f tokens/s   decode %.2f tokens/s   time to first token %.1f ms\n", median(prompt_tps), dec,
                median(ttft) * 1e3);
    std::printf("  decode reads %.2f GB of weights per token: %.1f GB/s of the machine's %.1f GB/s read bandwidth (%.0f%%)\n",
                weights_gb, achieved, bandwidth, 100 * achieved / bandwidth);
  }
  return 0;
}

// All-reduce (sum) bandwidth against message size on the active backend, nccl-tests' way: algorithm
// bandwidth = bytes / time, bus bandwidth = algorithm bandwidth x 2(world - 1)/world (what each link
// carries in a ring). NCCL buffers live on the rank's GPU.
int run_allreduce(const Options& o) {
  try {
    const auto comm = llm::dist::make_communicator(o.backend);
    const int world = comm->world_size();
    const llm::Device device = comm->backend() == "nccl" ? llm::Device::cuda(comm->local_rank() % std::max(1, llm::cuda_device_count()))
                                                          : llm::Device::cpu();
    if (comm->rank() == 0 && !o.json)
      std::printf("allreduce  backend %s  world %d  (float32 sum, median time)\n  %12s %12s %14s %14s\n", comm->backend().c_str(),
                  world, "bytes", "time (us)", "algbw (GB/s)", "busbw (GB/s)");
    for (int64_t bytes = 4 << 10; bytes <= (int64_t{256} << 20); bytes *= 4) {
      const int64_t n = bytes / 4;
      llm::Tensor buf = llm::Tensor::full({n}, 1.0, llm::DType::F32).to(device);
      std::vector<double> times;
      double spent = 0;
      for (int i = 0; i < 3 || (spent < 0.3 && i < 1000); ++i) {
        comm->barrier();
        const auto t0 = std::chrono::steady_clock::now();
        comm->all_reduce(buf, llm::dist::ReduceOp::Sum);
        const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        // Every rank stops together: rank 0 decides from the slowest rank's time.
        spent += comm->all_reduce_value(t, llm::dist::ReduceOp::Sum) / world;
        if (i >= 1) times.push_back(t);
      }
      const double t = comm->all_reduce_value(median(times), llm::dist::ReduceOp::Average);
      const double algbw = double(bytes) / t * 1e-9, busbw = algbw * 2.0 * (world - 1) / world;
      if (comm->rank() != 0) continue;
      if (o.json)
        std::printf("{\"op\":\"allreduce\",\"backend\":\"%s\",\"world\":%d,\"bytes\":%lld,\"us\":%.1f,\"algbw_gbs\":%.3f,"
                    "\"busbw_gbs\":%.3f}\n",
                    comm->backend().c_str(), world, (long long)bytes, t * 1e6, algbw, busbw);
      else
        std::printf("  %12lld %12.1f %14.3f %14.3f\n", (long long)bytes, t * 1e6, algbw, busbw);
    }
  } catch (const llm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    llm::dist::abort_world(1);
    return 1;
  }
  return 0;
}

int usage_error(const std::string& message) {
  std::fprintf(stderr,
               "error: %s (usage: llm-bench kernels [--threads N] [--json] | llm-bench train --config FILE [--batch B] "
               "[--seq T] [--steps N] [--threads N] [--zero] [--profile] [--json] | llm-bench generate [--shape llama-110m|gpt2-124m] "
               "[--prompt P] [--gen G] [--quantize q8] [--threads N] [--json] | llm-bench allreduce [--backend auto|mpi|nccl] "
               "[--json] | llm-bench cuda [SECTION... | --list])\n",
               message.c_str());
  return 2;
}

#if defined(LLM_HAVE_CUDA)
// Every section, or only those named (a shorter rerun on a GPU whose time is short); --list prints
// the section names, one a line (scripts/gpu_check.sh runs each in a process of its own).
int run_cuda(const std::vector<std::string>& only) {
  if (only.size() == 1 && only[0] == "--list") {
    for (const auto* section : llm::bench_cuda::sections()) std::printf("%s\n", section->name);
    return 0;
  }
  std::vector<const llm::bench_cuda::Section*> chosen;
  std::string known;
  for (const auto* section : llm::bench_cuda::sections()) {
    known += std::string(known.empty() ? "" : ", ") + section->name;
    if (only.empty() || std::find(only.begin(), only.end(), section->name) != only.end()) chosen.push_back(section);
  }
  for (const std::string& name : only) {
    bool found = false;
    for (const auto* section : chosen) found |= name == section->name;
    if (!found) return usage_error("llm-bench cuda: unknown section '" + name + "' (sections: " + known + ")");
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "error: llm-bench cuda: no CUDA device on this machine\n");
    return 1;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s, %d SMs, %.0f GiB\n", prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
  for (const auto* section : chosen) {
    std::printf("\n== %s\n", section->name);
    try {
      section->run();
    } catch (const std::exception& e) {
      std::printf("%s: failed: %s\n", section->name, e.what());
    }
  }
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage_error("missing command");
  const std::string command = argv[1];
  if (command != "kernels" && command != "train" && command != "generate" && command != "allreduce" &&
      command != "cuda")
    return usage_error("unknown command '" + command + "'");
  if (command == "cuda") {
#if defined(LLM_HAVE_CUDA)
    return run_cuda(std::vector<std::string>(argv + 2, argv + argc));
#else
    return usage_error("this llm-bench was built without CUDA, so it has no 'cuda' command");
#endif
  }
  Options options;
  auto integer = [&](int& i, const char* flag, long lo, long hi, long* out) -> bool {
    if (i + 1 >= argc) return false;
    char* end = nullptr;
    const long n = std::strtol(argv[++i], &end, 10);
    if (*argv[i] == '\0' || *end != '\0' || n < lo || n > hi) return false;
    (void)flag;
    *out = n;
    return true;
  };
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    long n = 0;
    if (arg == "--json") {
      options.json = true;
    } else if (arg == "--threads") {
      if (!integer(i, "--threads", 1, 4096, &n)) return usage_error("--threads: expected a positive integer");
      options.threads = int(n);
    } else if (command == "generate" && arg == "--shape" && i + 1 < argc) {
      options.shape = argv[++i];
    } else if (command == "generate" && arg == "--quantize" && i + 1 < argc) {
      if (std::string(argv[++i]) != "q8") return usage_error("--quantize: expected q8");
      options.q8 = true;
    } else if (command == "generate" && arg == "--prompt") {
      if (!integer(i, "--prompt", 1, 1 << 20, &n)) return usage_error("--prompt: expected a positive integer");
      options.prompt = n;
    } else if (command == "generate" && arg == "--gen") {
      if (!integer(i, "--gen", 2, 1 << 20, &n)) return usage_error("--gen: expected an integer of at least 2");
      options.gen = n;
    } else if (command == "allreduce" && arg == "--backend" && i + 1 < argc) {
      options.backend = argv[++i];
    } else if (command == "train" && arg == "--config" && i + 1 < argc) {
      options.config = argv[++i];
    } else if (command == "train" && arg == "--batch") {
      if (!integer(i, "--batch", 1, 1 << 20, &n)) return usage_error("--batch: expected a positive integer");
      options.batch = n;
    } else if (command == "train" && arg == "--seq") {
      if (!integer(i, "--seq", 1, 1 << 20, &n)) return usage_error("--seq: expected a positive integer");
      options.seq = n;
    } else if (command == "train" && arg == "--zero") {
      options.zero = true;
    } else if (command == "train" && arg == "--profile") {
      options.profile = true;
    } else if (command == "train" && arg == "--steps") {
      if (!integer(i, "--steps", 1, 100000, &n)) return usage_error("--steps: expected a positive integer");
      options.steps = int(n);
    } else {
      return usage_error("unknown argument '" + arg + "'");
    }
  }
  if (command == "kernels") return run_kernels(options);
  if (command == "generate") return run_generate(options);
  if (command == "allreduce") return run_allreduce(options);
#if defined(LLM_BENCH_TRAIN)
  return run_train(options);
#else
  return usage_error("this llm-bench was built without the trainer (llm_train), so it has no 'train' command");
#endif
}
