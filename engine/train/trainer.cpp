#include "engine/train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "engine/train/checkpoint.h"
#include "engine/train/pretrained.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

namespace llm::train {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

std::atomic<bool> Trainer::stop_requested_{false};

namespace {
// The tokenizer spec a prepared directory was made with (its meta.json), or "".
std::string dataset_tokenizer(const std::string& dir) {
  const fs::path meta = fs::path(dir) / "meta.json";
  if (!fs::is_regular_file(meta)) return "";
  const nlohmann::json j = nlohmann::json::parse(data::read_file(meta.string()), nullptr, false);
  if (j.is_discarded() || !j.contains("tokenizer") || !j["tokenizer"].is_string()) return "";
  return j["tokenizer"].get<std::string>();
}

std::string format_duration(double seconds) {
  char buf[32];
  const long s = std::lround(std::max(0.0, seconds));
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  return buf;
}

std::vector<int64_t> flatten(const data::LoaderState& s) {
  std::vector<int64_t> v{s.shard, s.position, s.batches};
  for (uint64_t w : s.rng) v.push_back(static_cast<int64_t>(w));
  return v;
}

data::LoaderState unflatten(const std::vector<int64_t>& v) {
  LLM_CHECK(v.size() >= 3, "checkpoint: loader state has ", v.size(), " values, expected at least 3");
  data::LoaderState s;
  s.shard = v[0];
  s.position = v[1];
  s.batches = v[2];
  for (size_t i = 3; i < v.size(); ++i) s.rng.push_back(static_cast<uint64_t>(v[i]));
  return s;
}
}  // namespace

Trainer::Trainer(TrainConfig config, std::ostream& log) : config_(std::move(config)), log_(log) {
  cpu::set_num_threads(static_cast<int>(config_.threads));
  const bool prepared_dir = fs::is_directory(config_.train_data);
  tokenizer_spec_ = !config_.tokenizer.empty() ? config_.tokenizer : prepared_dir ? dataset_tokenizer(config_.train_data) : "";
  if (!tokenizer_spec_.empty()) tokenizer_ = data::load_tokenizer(tokenizer_spec_);

  data::LoaderOptions lo;
  lo.B = config_.batch_size;
  lo.T = config_.seq_len;
  lo.mode = data::parse_loader_mode(config_.loader_mode);
  lo.seed = config_.seed;
  train_loader_ = std::make_unique<data::DataLoader>(config_.train_data, "train", lo);
  const std::string val = !config_.val_data.empty() ? config_.val_data : prepared_dir ? config_.train_data : "";
  if (!val.empty() && config_.eval_interval > 0) {
    data::LoaderOptions vo = lo;
    vo.mode = data::LoaderOptions::Mode::Sequential;  // the same batches at every evaluation
    try {
      val_loader_ = std::make_unique<data::DataLoader>(val, "val", vo);
    } catch (const Error& e) {
      if (!config_.val_data.empty()) throw;  // asked for explicitly: a real error
      log_ << "note: no validation split (" << e.what() << ")\n";
    }
  }

  models::ModelConfig mc = config_.model;
  std::map<std::string, Tensor> init_weights;
  if (!config_.init_from.empty()) {
    // A native checkpoint, a Hugging Face directory or a llama2.c .bin: weights only, fresh optimizer.
    io::LoadedModel loaded = load_pretrained(config_.init_from);
    mc = loaded.config;
    init_weights = std::move(loaded.weights);
    if (!tokenizer_ && !loaded.tokenizer.empty()) {
      tokenizer_spec_ = loaded.tokenizer;
      tokenizer_ = data::load_tokenizer(tokenizer_spec_);
    }
  } else {
    if (config_.vocab_from_data) {
      LLM_CHECK(tokenizer_, config_.source, ": model.vocab_size: auto needs a tokenizer (data.tokenizer, or a prepared ",
                "data.train directory)");
      mc.vocab_size = tokenizer_->vocab_size();
    }
    if (mc.max_seq_len == 0) mc.max_seq_len = config_.seq_len;
  }
  LLM_CHECK(config_.seq_len <= mc.max_seq_len, config_.source, ": train.seq_len ", config_.seq_len,
            " exceeds the model's context ", mc.max_seq_len);
  if (tokenizer_)
    LLM_CHECK(tokenizer_->vocab_size() <= mc.vocab_size, config_.source, ": the tokenizer has ", tokenizer_->vocab_size(),
              " tokens but the model only ", mc.vocab_size);
  model_ = models::make_model(mc, config_.seed);
  if (!init_weights.empty()) model_->load_state(init_weights);

  optim::AdamWConfig oc;
  oc.beta1 = config_.beta1;
  oc.beta2 = config_.beta2;
  oc.eps = config_.eps;
  oc.weight_decay = config_.weight_decay;
  optimizer_ = std::make_unique<optim::AdamW>(model_->named_parameters(), oc);
  schedule_.kind = optim::Schedule::parse(config_.schedule);
  schedule_.lr = config_.lr;
  schedule_.min_lr = config_.min_lr;
  schedule_.warmup_steps = config_.warmup_steps;
  schedule_.total_steps = config_.max_steps;

  peak_flops_ = measure_gemm_ceiling();
  log_ << "model: " << mc.summary() << ", " << model_->num_parameters() << " parameters\n"
       << "data: " << train_loader_->num_tokens() << " training tokens in " << train_loader_->files().size()
       << " shard(s)" << (val_loader_ ? ", " + std::to_string(val_loader_->num_tokens()) + " validation tokens" : "")
       << "\n"
       << "train: " << config_.batch_size << " x " << config_.seq_len << " tokens x " << config_.grad_accum
       << " accumulation = " << config_.batch_size * config_.seq_len * config_.grad_accum << " tokens/step, "
       << cpu::num_threads() << " threads, GEMM ceiling " << std::lround(peak_flops_ * 1e-9) << " GFLOP/s\n";
}

Trainer::~Trainer() = default;

void Trainer::stop() { stop_requested_ = true; }

double flops_per_token(const models::ModelConfig& c, int64_t seq_len) {
  int64_t n = c.num_parameters();
  if (c.arch == models::Arch::GPT2) n -= c.max_seq_len * c.dim;
  return 6.0 * static_cast<double>(n) + 6.0 * static_cast<double>(c.n_layers * seq_len * c.dim);
}

// Sustained single-precision GEMM rate of this machine at the current thread count: the ceiling MFU
// is measured against (a CPU has no datasheet number that fits every core count and clock).
double measure_gemm_ceiling() {
  const int64_t M = 256, N = 768, K = 768;
  std::vector<float> a(M * K, 0.5f), b(K * N, 0.25f), c(M * N);
  auto run = [&] { cpu::sgemm(false, true, M, N, K, 1.f, a.data(), K, b.data(), K, 0.f, c.data(), N); };
  run();
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = clock_type::now();
    for (int i = 0; i < 4; ++i) run();
    const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    best = std::max(best, 4 * 2.0 * M * N * K / s);
  }
  return best;
}

void Trainer::resume(const std::string& path_or_auto) {
  std::string path = path_or_auto;
  if (path == "auto") {
    const std::vector<std::string> all = list_checkpoints(config_.checkpoint_dir);
    if (all.empty()) {
      log_ << "resume: no checkpoint in " << config_.checkpoint_dir << ", starting from scratch\n";
      return;
    }
    path = all.back();
  }
  Checkpoint ck = load_checkpoint(path);
  LLM_CHECK(ck.model_config.summary() == model_->config().summary(), path, ": its model (", ck.model_config.summary(),
            ") differs from the config's (", model_->config().summary(), ")");
  model_->load_state(std::map<std::string, Tensor>(ck.weights.begin(), ck.weights.end()));
  LLM_CHECK(ck.has_optimizer, path, ": has no optimizer state, so the run cannot resume from it (use model.init_from)");
  optimizer_->set_state(ck.optimizer);
  train_loader_->set_state(unflatten(ck.loader_state));
  step_ = ck.step;
  tokens_ = ck.tokens;
  log_ << "resume: " << path << " at step " << step_ << "\n";
}

double training_step(models::CausalLM& model, optim::AdamW& optimizer, const std::vector<data::Batch>& micro_batches,
                     float lr, float grad_clip, double* grad_norm) {
  optimizer.zero_grad();
  double loss_sum = 0;
  const float inv_accum = 1.f / static_cast<float>(micro_batches.size());
  for (const data::Batch& batch : micro_batches) {
    models::ForwardOptions options;
    options.doc = batch.doc;
    options.positions = batch.positions;
    const Tensor loss = ops::cross_entropy(model.forward(batch.inputs, options), batch.targets);
    loss_sum += loss.item();
    (micro_batches.size() == 1 ? loss : ops::scale(loss, inv_accum)).backward();
  }
  const double loss = loss_sum / static_cast<double>(micro_batches.size());
  LLM_CHECK(std::isfinite(loss), "the loss is ", loss, "; stopping (the last checkpoint is kept as it was). Lower "
            "optim.lr or check the data");
  const double norm = optim::grad_norm(model.parameters());
  LLM_CHECK(std::isfinite(norm), "the gradient norm is ", norm, "; stopping (the last checkpoint is kept as it was)");
  optimizer.step(lr, optim::clip_scale(norm, grad_clip));
  if (grad_norm) *grad_norm = norm;
  return loss;
}

double Trainer::train_step() {
  std::vector<data::Batch> micro;
  for (int64_t i = 0; i < config_.grad_accum; ++i) micro.push_back(train_loader_->next());
  try {
    return training_step(*model_, *optimizer_, micro, schedule_.at(step_), config_.grad_clip, &last_grad_norm_);
  } catch (const Error& e) {
    throw Error("step " + std::to_string(step_ + 1) + ": " + e.what());
  }
}

double Trainer::evaluate() {
  if (!val_loader_) return 0;
  NoGradGuard no_grad;
  val_loader_->reset();
  double total = 0;
  for (int64_t i = 0; i < config_.eval_batches; ++i) {
    const data::Batch b = val_loader_->next();
    total += ops::cross_entropy(model_->forward(b.inputs), b.targets).item();
  }
  return total / static_cast<double>(std::max<int64_t>(config_.eval_batches, 1));
}

std::string Trainer::sample(int64_t n_tokens) {
  if (!tokenizer_) return "";
  NoGradGuard no_grad;
  // Its own generator, seeded from the step: sampling never changes the training run.
  Generator gen(config_.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(step_ + 1)));
  const int32_t start = tokenizer_->bos_id() >= 0 ? tokenizer_->bos_id() : tokenizer_->eot_id();
  std::vector<int32_t> ids{start >= 0 ? start : 0};
  const int64_t V = model_->config().vocab_size, ctx_max = model_->config().max_seq_len;
  for (int64_t i = 0; i < n_tokens; ++i) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(ids.size()), ctx_max);
    const std::vector<int32_t> ctx(ids.end() - n, ids.end());
    const Tensor logits = model_->forward(Tensor::from_vector(ctx, Shape{1, n}));
    const float* last = logits.data<float>() + (n - 1) * V;
    const double temp = std::max(1e-3f, config_.sample_temperature);
    double mx = -1e300;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, last[v] / temp);
    std::vector<double> p(V);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += p[v] = std::exp(last[v] / temp - mx);
    double u = gen.uniform() * z;
    int32_t pick = 0;
    while (pick < V - 1 && (u -= p[pick]) > 0) ++pick;
    if (pick == tokenizer_->eot_id()) break;
    ids.push_back(pick);
  }
  return tokenizer_->decode(std::vector<int32_t>(ids.begin() + 1, ids.end()));
}

void Trainer::save_checkpoint_now() {
  Checkpoint ck;
  ck.model_config = model_->config();
  ck.weights = model_->named_parameters();
  ck.has_optimizer = true;
  ck.optimizer = optimizer_->state();
  ck.step = step_;
  ck.tokens = tokens_;
  ck.loader_state = flatten(train_loader_->state());
  ck.train_config_yaml = to_yaml(config_);
  ck.tokenizer = tokenizer_spec_;
  const std::string path = checkpoint_path(config_.checkpoint_dir, step_);
  save_checkpoint(path, ck);
  prune_checkpoints(config_.checkpoint_dir, config_.keep_last);
  log_ << "checkpoint: " << path << "\n";
}

std::vector<StepRecord> Trainer::run() {
  stop_requested_ = false;
  fs::create_directories(config_.checkpoint_dir);
  const std::string metrics_path =
      config_.metrics_path.empty() ? (fs::path(config_.checkpoint_dir) / "metrics.jsonl").string() : config_.metrics_path;
  std::ofstream metrics(metrics_path, step_ == 0 ? std::ios::trunc : std::ios::app);
  LLM_CHECK(metrics.good(), metrics_path, ": cannot write the metrics file");

  const int64_t tokens_per_step = config_.batch_size * config_.seq_len * config_.grad_accum;
  int64_t last_step = config_.max_steps;
  if (config_.max_tokens > 0) last_step = std::min(last_step, (config_.max_tokens + tokens_per_step - 1) / tokens_per_step);
  std::vector<StepRecord> records;
  const auto run_start = clock_type::now();
  const int64_t first_step = step_;
  double window_seconds = 0;
  int64_t window_tokens = 0;
  while (step_ < last_step) {
    const auto t0 = clock_type::now();
    const double lr = schedule_.at(step_);
    const double loss = train_step();
    ++step_;
    tokens_ += tokens_per_step;
    const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    window_seconds += seconds;
    window_tokens += tokens_per_step;

    StepRecord r;
    r.step = step_;
    r.loss = loss;
    r.lr = lr;
    r.grad_norm = last_grad_norm_;
    r.tokens_per_s = tokens_per_step / seconds;
    r.mfu = flops_per_token(model_->config(), config_.seq_len) * r.tokens_per_s / peak_flops_;
    records.push_back(r);
    metrics << nlohmann::json{{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                              {"tokens_per_s", r.tokens_per_s}, {"mfu", r.mfu}}.dump()
            << "\n";

    if (config_.log_interval > 0 && (step_ % config_.log_interval == 0 || step_ == last_step || step_ == first_step + 1)) {
      const double tps = window_tokens / window_seconds;
      const double elapsed = std::chrono::duration<double>(clock_type::now() - run_start).count();
      const double eta = elapsed / static_cast<double>(step_ - first_step) * static_cast<double>(last_step - step_);
      char line[256];
      std::snprintf(line, sizeof(line),
                    "step %lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | MFU %.1f%% | ETA %s",
                    static_cast<long long>(step_), static_cast<long long>(last_step), loss, lr, last_grad_norm_, tps,
                    100.0 * flops_per_token(model_->config(), config_.seq_len) * tps / peak_flops_, format_duration(eta).c_str());
      log_ << line << std::endl;
      window_seconds = 0;
      window_tokens = 0;
    }
    if (val_loader_ && config_.eval_interval > 0 && (step_ % config_.eval_interval == 0 || step_ == last_step)) {
      const double val = evaluate();
      char line[96];
      std::snprintf(line, sizeof(line), "step %lld: val loss %.4f", static_cast<long long>(step_), val);
      log_ << line << std::endl;
      metrics << nlohmann::json{{"step", step_}, {"val_loss", val}}.dump() << "\n";
    }
    if (tokenizer_ && config_.sample_interval > 0 && (step_ % config_.sample_interval == 0 || step_ == last_step))
      log_ << "sample at step " << step_ << ":\n" << sample(config_.sample_tokens) << "\n---" << std::endl;
    metrics.flush();
    const bool stopping = stop_requested_.load();
    if (stopping || step_ == last_step || (config_.checkpoint_interval > 0 && step_ % config_.checkpoint_interval == 0))
      save_checkpoint_now();
    if (stopping) {
      log_ << "stopped by signal at step " << step_ << "\n";
      break;
    }
  }
  return records;
}

}  // namespace llm::train
