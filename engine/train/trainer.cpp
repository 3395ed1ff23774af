#include "engine/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/prepare.h"
#include "data/tokenizer.h"
#include "engine/core/profile.h"
#include "engine/generate/generate.h"
#include "engine/io/lora_adapter.h"
#include "engine/train/checkpoint.h"
#include "engine/train/pretrained.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

namespace llm::train {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

std::atomic<bool> Trainer::stop_requested_{false};

namespace {
// The tokenizer spec a prepared directory was made with (its meta.json), or "" without one; a
// corrupt meta.json is its own error, not "no tokenizer".
std::string dataset_tokenizer(const std::string& dir) {
  if (!fs::is_regular_file(fs::path(dir) / "meta.json")) return "";
  return data::read_dataset_meta(dir).tokenizer;
}

std::string format_duration(double seconds) {
  char buf[32];
  const long s = std::lround(std::max(0.0, seconds));
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  return buf;
}

// dist.backend auto means nccl for a launched run on the GPU (mpi on the CPU, as make_communicator
// decides); a mismatch with train.device was refused when the recipe was read.
std::string communicator_backend(const TrainConfig& c) {
  if (c.dist_backend == "auto" && c.device == "cuda" && dist::detect_launch().launched) return "nccl";
  return c.dist_backend;
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

Trainer::Trainer(TrainConfig config, std::ostream& log)
    : config_(std::move(config)),
      comm_(dist::make_communicator(communicator_backend(config_), config_.timeout_s)),
      log_(comm_->rank() == 0 ? log : null_log_) {
  stop_requested_ = false;  // a stop meant for an earlier trainer; from here on one counts, even before run()
  cpu::set_num_threads(static_cast<int>(config_.threads));
  LLM_CHECK(!config_.is_rl() || config_.zero == 0, config_.source, ": ", config_.method,
            " does not shard its optimizer (dist.zero covers pretrain and sft); use plain data parallelism");
  const bool prepared_dir = !config_.is_finetune() && fs::is_directory(config_.train_data);
  tokenizer_spec_ = !config_.tokenizer.empty() ? config_.tokenizer : prepared_dir ? dataset_tokenizer(config_.train_data) : "";
  if (!tokenizer_spec_.empty()) tokenizer_ = data::load_tokenizer(tokenizer_spec_);

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
  if (init_weights.empty()) {
    model_ = models::make_model(mc, config_.seed);
  } else {
    model_ = models::make_model_for_loading(mc);
    model_->adopt_state(std::move(init_weights));  // takes them over: no second copy
  }
  dist::broadcast_parameters(*comm_, model_->parameters());  // identical from the seed; now guaranteed
  if (config_.device == "cuda") {
    // fp32 master weights on the GPU (initialized on the CPU first: the same weights as a CPU run).
    LLM_CHECK(cuda_device_count() > 0, config_.source, ": train.device: cuda, but no CUDA device is visible",
              " (or this build has no CUDA backend)");
    LLM_CHECK(!config_.is_rl(), config_.source, ": train.device: cuda runs pretraining and SFT (no GRPO or ",
              "REINFORCE on the GPU yet)");
    LLM_CHECK(config_.zero == 0 || comm_->backend() == "nccl", config_.source, ": dist.zero: 1 on the GPU shards ",
              "over NCCL: launch with mpirun (dist.backend auto or nccl)");
    // One GPU per process: the one the NCCL communicator chose (local rank modulo the GPUs here).
    device_ = Device::cuda(comm_->local_rank() % cuda_device_count());
    model_->to(device_);
    if (config_.use_bf16()) model_->set_activation_dtype(DType::BF16);
    ops::set_matmul_backend(ops::parse_matmul_backend(config_.matmul));
    ops::set_attention_backend(ops::parse_attention_backend(config_.attention));
  }

  std::string data_line;
  if (config_.is_finetune()) {
    setup_finetune_data();
  } else {
    data::LoaderOptions lo;
    lo.B = config_.batch_size;
    lo.T = config_.seq_len;
    lo.mode = data::parse_loader_mode(config_.loader_mode);
    lo.seed = config_.seed;
    lo.rank = comm_->rank();
    lo.world_size = comm_->world_size();
    lo.vocab_size = mc.vocab_size;
    train_loader_ = std::make_unique<data::DataLoader>(config_.train_data, "train", lo);
    const std::string val = !config_.val_data.empty() ? config_.val_data : prepared_dir ? config_.train_data : "";
    if (!val.empty() && config_.eval_interval > 0) {
      data::LoaderOptions vo = lo;
      vo.mode = data::LoaderOptions::Mode::Sequential;  // the same batches at every evaluation
      vo.rank = 0;                                      // only rank 0 evaluates, on global batches
      vo.world_size = 1;
      vo.B = lo.B * lo.world_size;
      try {
        val_loader_ = std::make_unique<data::DataLoader>(val, "val", vo);
      } catch (const Error& e) {
        if (!config_.val_data.empty()) throw;  // asked for explicitly: a real error
        log_ << "note: no validation split (" << e.what() << ")\n";
      }
    }
    log_ << "data: " << train_loader_->num_tokens() << " training tokens in " << train_loader_->files().size()
         << " shard(s)" << (val_loader_ ? ", " + std::to_string(val_loader_->num_tokens()) + " validation tokens" : "") << "\n";
  }

  if (config_.lora_rank > 0) {
    // After the data: GRPO's reference model is a copy of the base weights, without adapters.
    lora_ = std::make_unique<nn::LoraConfig>();
    lora_->rank = config_.lora_rank;
    lora_->alpha = config_.lora_alpha;
    lora_->dropout = config_.lora_dropout;
    lora_->rslora = config_.lora_rslora;
    for (size_t a = 0, b; a <= config_.lora_targets.size(); a = b + 1) {
      b = config_.lora_targets.find(',', a);
      if (b == std::string::npos) b = config_.lora_targets.size();
      std::string name = config_.lora_targets.substr(a, b - a);
      name.erase(0, name.find_first_not_of(' '));
      name.erase(name.find_last_not_of(' ') + 1);
      if (!name.empty()) lora_->targets.push_back(name);
    }
    try {
      const std::vector<std::string> adapted = nn::apply_lora(*model_, *lora_, config_.seed);
      model_->to(device_);  // the new adapters join the weights' device
      log_ << "lora: rank " << lora_->rank << ", alpha " << lora_->alpha << " on " << adapted.size() << " modules ("
           << config_.lora_targets << ")\n";
    } catch (const Error& e) {
      const std::string what = e.what();  // the LoRA code's messages already start with "lora: "
      throw Error(config_.source + (what.rfind("lora: ", 0) == 0 ? ": " : ": lora: ") + what);
    }
  }

  optim::AdamWConfig oc;
  oc.beta1 = config_.beta1;
  oc.beta2 = config_.beta2;
  oc.eps = config_.eps;
  oc.weight_decay = config_.weight_decay;
  // Only what trains gets optimizer state and gradient averaging: every weight, or the LoRA adapters alone.
  const auto trainable = nn::trainable_parameters(*model_);
  if (config_.zero == 1) {
    zero_ = std::make_unique<optim::ZeroAdamW>(trainable, oc, *comm_);
  } else {
    optimizer_ = std::make_unique<optim::AdamW>(trainable, oc);
    if (comm_->world_size() > 1) dp_ = std::make_unique<dist::DataParallel>(*comm_, trainable, config_.bucket_mb);
    if (policy_trainer_) policy_trainer_->set_data_parallel(dp_.get());
  }
  schedule_.kind = optim::Schedule::parse(config_.schedule);
  schedule_.lr = config_.lr;
  schedule_.min_lr = config_.min_lr;
  schedule_.warmup_steps = config_.warmup_steps;
  schedule_.total_steps = config_.max_steps;

  // The world's ceiling: MFU counts all ranks' tokens. On a GPU, the dense bf16 datasheet rate.
  const double per_rank = config_.peak_tflops > 0 ? config_.peak_tflops * 1e12
                          : device_.is_cuda()     ? models::kGpuPeakBf16Flops
                                                  : measure_gemm_ceiling();
  peak_flops_ = per_rank * comm_->world_size();
  int64_t trained = 0;
  for (const auto& [name, t] : trainable) trained += t.numel();
  log_ << "model: " << mc.summary() << ", " << model_->num_parameters() << " parameters"
       << (trained != model_->num_parameters() ? ", " + std::to_string(trained) + " trained" : "") << "\n";
  if (config_.is_rl())
    log_ << config_.method << ": " << config_.prompts_per_step << " prompts x " << config_.group_size
         << " completions per step, " << config_.rl_iterations << " update(s) each, " << cpu::num_threads() << " threads\n";
  else
    log_ << "train: " << config_.batch_size << " x " << config_.seq_len << " tokens x " << config_.grad_accum
         << " accumulation x " << comm_->world_size() << " rank(s) = " << tokens_per_step() << " tokens/step, "
         << (device_.is_cuda() ? std::string("cuda, ") + (config_.use_bf16() ? "bf16" : "fp32") + " activations, matmul " +
                                     ops::to_string(ops::matmul_backend()) + ", attention " +
                                     ops::to_string(ops::attention_backend()) + ", peak "
                               : std::to_string(cpu::num_threads()) + " threads, GEMM ceiling ")
         << std::lround(peak_flops_ * 1e-9 / comm_->world_size()) << " GFLOP/s" << (comm_->world_size() > 1 ? " per rank" : "")
         << "\n";
  if (comm_->world_size() > 1)
    log_ << "dist: " << comm_->world_size() << " ranks over " << comm_->backend()
         << (zero_ ? ", ZeRO-1: optimizer state " + std::to_string(zero_->shard_size()) + " elements per moment per rank"
                   : ", " + std::to_string(dp_->num_buckets()) + " gradient bucket(s)")
         << ", timeout " << config_.timeout_s << " s\n";
}

void Trainer::setup_finetune_data() {
  LLM_CHECK(tokenizer_, config_.source, ": fine-tuning needs a tokenizer (data.tokenizer, or a model.init_from that has one)");
  std::vector<Record> records = read_records(config_.train_data), val;
  LLM_CHECK(!records.empty(), config_.train_data, ": no records");
  if (!config_.val_data.empty()) {
    val = read_records(config_.val_data);
  } else if (config_.val_fraction > 0) {
    // The last records are held out: plain to see, and the same for every seed.
    const size_t held = static_cast<size_t>(std::ceil(config_.val_fraction * static_cast<double>(records.size())));
    LLM_CHECK(held < records.size(), config_.source, ": finetune.val_fraction ", config_.val_fraction, " leaves no training records");
    val.assign(std::make_move_iterator(records.end() - static_cast<std::ptrdiff_t>(held)), std::make_move_iterator(records.end()));
    records.resize(records.size() - held);
  }
  // The chat template travels with the tokenizer: an HF directory given as init_from, or the
  // directory a checkpoint recorded as its tokenizer (so GRPO after SFT formats prompts the same way).
  const std::string template_dir = fs::is_directory(config_.init_from) ? config_.init_from
                                   : fs::is_directory(tokenizer_spec_) ? tokenizer_spec_
                                                                       : "";
  const generate::ChatTemplate chat =
      template_dir.empty() ? generate::ChatTemplate() : generate::ChatTemplate::from_model_dir(template_dir);
  SftFormat format;
  format.prompt_key = config_.prompt_key;
  format.completion_key = config_.completion_key;
  format.chat_template = config_.chat_template;
  format.system_prompt = config_.system_prompt;
  const std::string template_name = config_.chat_template ? chat.origin() : "plain text";

  if (config_.method == "sft") {
    SftOptions so;
    so.B = config_.batch_size;
    so.T = config_.seq_len;
    so.packing = config_.packing;
    so.seed = config_.seed;
    so.rank = comm_->rank();
    so.world_size = comm_->world_size();
    sft_train_ = std::make_unique<SftDataset>(tokenize_records(records, format, *tokenizer_, chat), so, config_.train_data);
    log_ << "data: " << config_.train_data << " (" << template_name << ", " << (so.packing ? "packed" : "padded")
         << "): " << sft_train_->stats().summary() << "\n";
    if (!val.empty() && config_.eval_interval > 0) {
      SftOptions vo = so;  // only rank 0 evaluates, on global batches
      vo.rank = 0;
      vo.world_size = 1;
      vo.B = so.B * so.world_size;
      sft_val_ = std::make_unique<SftDataset>(tokenize_records(val, format, *tokenizer_, chat), vo, "validation records");
      log_ << "validation: " << sft_val_->stats().summary() << "\n";
    }
    return;
  }
  prompts_ = std::move(records);
  val_prompts_ = std::move(val);
  reward_ = std::make_unique<Reward>(config_.reward);
  for (const auto* set : {&prompts_, &val_prompts_})
    for (const Record& r : *set) reward_->check_example(r.fields, r.where);
  log_ << "data: " << config_.train_data << " (" << template_name << "): " << prompts_.size() << " prompts"
       << (val_prompts_.empty() ? "" : ", " + std::to_string(val_prompts_.size()) + " validation prompts") << "\n"
       << "reward: " << reward_->describe() << "\n";

  GrpoOptions go;
  go.reinforce = config_.method == "reinforce";
  go.group_size = config_.group_size;
  go.max_new_tokens = config_.max_new_tokens;
  go.temperature = config_.rl_temperature;
  go.top_p = config_.rl_top_p;
  go.iterations = config_.rl_iterations;
  go.clip_eps = config_.clip_eps;
  go.kl_beta = config_.kl_beta;
  go.micro_batch = config_.batch_size;
  go.grad_clip = config_.grad_clip;
  std::unique_ptr<models::CausalLM> reference;
  if (config_.kl_beta > 0) {  // the starting policy, frozen
    NoGradGuard no_grad;
    reference = models::make_model(model_->config(), 0);
    const auto weights = model_->named_parameters();
    reference->load_state(std::map<std::string, Tensor>(weights.begin(), weights.end()));
    reference->set_training(false);
  }
  PromptEncoder encode = [this, format, chat](const Record& r) {
    const std::vector<generate::Message> messages = to_prompt(r, format);
    if (format.chat_template) return chat.encode(*tokenizer_, messages, true);
    std::string text;
    for (const generate::Message& m : messages) text += m.content;
    return generate::encode_prompt(*tokenizer_, text);
  };
  // Prompts that leave no room for a completion in the model's context are left out (and counted).
  const int64_t room = model_->config().max_seq_len - 1;
  size_t too_long = 0;
  for (std::vector<Record>* set : {&prompts_, &val_prompts_}) {
    const size_t before = set->size();
    set->erase(std::remove_if(set->begin(), set->end(),
                              [&](const Record& r) { return static_cast<int64_t>(encode(r).size()) >= room; }),
               set->end());
    too_long += before - set->size();
  }
  if (too_long) log_ << "note: " << too_long << " prompt(s) longer than the model's context left out\n";
  LLM_CHECK(!prompts_.empty(), config_.train_data, ": no prompt fits the model's context of ", room + 1, " tokens");
  prompt_order_ = std::make_unique<EpochOrder>(static_cast<int64_t>(prompts_.size()), config_.seed);
  policy_trainer_ = std::make_unique<PolicyTrainer>(
      go, *model_, std::move(reference), *tokenizer_, encode, *reward_,
      config_.chat_template ? chat.stop_strings() : std::vector<std::string>{});
}

Trainer::~Trainer() = default;

void Trainer::stop() { stop_requested_ = true; }

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

void Trainer::on_root(const std::function<void()>& fn) {
  std::string failure;
  if (is_root()) {
    try {
      fn();
    } catch (const std::exception& e) {
      failure = e.what();
      if (comm_->world_size() == 1) throw;
    }
  }
  comm_->broadcast_vector(failure, 0);
  if (!failure.empty()) throw Error(is_root() ? failure : "rank 0 failed: " + failure);
}

void Trainer::resume(const std::string& path_or_auto) {
  // Rank 0 reads the checkpoint (only it writes them, so only it is sure to see them) and sends
  // the weights, optimizer moments and run position to the others.
  std::string path = path_or_auto;
  Checkpoint ck;
  optim::AdamW::State moments;  // in the trained parameters' order on every rank, for the broadcast
  for (const auto& [name, p] : nn::trainable_parameters(*model_)) {
    moments.m.emplace_back(name, Tensor::empty(p.shape()));
    moments.v.emplace_back(name, Tensor::empty(p.shape()));
  }
  on_root([&] {
    if (path == "auto") {
      const std::vector<std::string> all = list_checkpoints(config_.checkpoint_dir);
      path = all.empty() ? "" : all.back();
    }
    if (path.empty()) return;
    ck = load_checkpoint(path);
    LLM_CHECK(ck.model_config.summary() == model_->config().summary(), path, ": its model (", ck.model_config.summary(),
              ") differs from the config's (", model_->config().summary(), ")");
    LLM_CHECK(ck.has_optimizer, path, ": has no optimizer state, so the run cannot resume from it (use model.init_from)");
    model_->load_state(std::map<std::string, Tensor>(ck.weights.begin(), ck.weights.end()));
    optimizer_ ? optimizer_->set_state(ck.optimizer) : zero_->set_state(ck.optimizer);  // checks names and shapes
    const std::map<std::string, Tensor> m(ck.optimizer.m.begin(), ck.optimizer.m.end()),
        v(ck.optimizer.v.begin(), ck.optimizer.v.end());
    for (size_t i = 0; i < moments.m.size(); ++i) {
      moments.m[i].second.copy_(m.at(moments.m[i].first));
      moments.v[i].second.copy_(v.at(moments.v[i].first));
    }
    moments.step = ck.optimizer.step;
    set_data_state(ck.loader_state);  // checks it fits this kind of run
  });
  comm_->broadcast_vector(path, 0);
  if (path.empty()) {
    log_ << "resume: no checkpoint in " << config_.checkpoint_dir << ", starting from scratch\n";
    return;
  }
  if (comm_->world_size() > 1) {
    dist::broadcast_parameters(*comm_, model_->parameters());
    for (auto* list : {&moments.m, &moments.v})
      for (auto& named : *list) comm_->broadcast(named.second, 0);
    comm_->broadcast(&moments.step, 1, dist::Elem::I64, 0);
    if (zero_) zero_->set_state(moments);  // keeps this rank's shard
    else optimizer_->set_state(moments);
    comm_->broadcast_vector(ck.loader_state, 0);
    set_data_state(ck.loader_state);
  }
  int64_t counters[2] = {ck.step, ck.tokens};
  comm_->broadcast(counters, 2, dist::Elem::I64, 0);
  step_ = counters[0];
  tokens_ = counters[1];
  if (lora_) {  // the adapters' dropout counters, so a resumed run draws the same masks
    comm_->broadcast_vector(ck.rng_state, 0);
    const auto layers = nn::lora_layers(*model_);
    LLM_CHECK(ck.rng_state.size() == layers.size(), path, ": holds ", ck.rng_state.size(), " adapter counters for ",
              layers.size(), " adapted modules");
    for (size_t i = 0; i < layers.size(); ++i) layers[i].second->lora.calls = ck.rng_state[i];
  }
  log_ << "resume: " << path << " at step " << step_ << "\n";
}

namespace {
// Where the model's parameters live (the CPU for a model without any).
Device model_device(const models::CausalLM& model) {
  const std::vector<Tensor> params = model.parameters();
  return params.empty() ? Device::cpu() : params.front().device();
}

// The batch's tensors on `device` (a copy through pinned staging when that is a GPU).
data::Batch on_device(const data::Batch& b, Device device) {
  auto move = [&](const Tensor& t) { return t.defined() ? t.to(device) : t; };
  return data::Batch(move(b.inputs), move(b.targets), move(b.doc), move(b.positions));
}

// Forward and backward over the micro-batches, gradients accumulated, each loss scaled by
// 1/micro_batches.size(); `before_last_backward` runs just before the backward that completes the
// gradients. Returns the mean loss, averaged over all ranks when `comm` is given (every rank then
// sees the same value, so all stop together on a non-finite one).
double accumulate_gradients(models::CausalLM& model, const std::vector<data::Batch>& micro_batches,
                            dist::Communicator* comm, const std::function<void()>& before_last_backward) {
  const float inv_accum = 1.f / static_cast<float>(micro_batches.size());
  const Device device = model_device(model);
  // The losses are read after the last backward: reading one sooner would make the host wait for
  // the device between forward and backward.
  std::vector<Tensor> losses;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const data::Batch batch = on_device(micro_batches[i], device);
    models::ForwardOptions options;
    options.doc = batch.doc;
    options.positions = batch.positions;
    const Tensor loss = ops::cross_entropy(model.forward(batch.inputs, options), batch.targets);
    losses.push_back(loss.detach());
    if (i + 1 == micro_batches.size() && before_last_backward) before_last_backward();
    (micro_batches.size() == 1 ? loss : ops::scale(loss, inv_accum)).backward();
  }
  double loss_sum = 0;
  for (const Tensor& l : losses) loss_sum += l.item();
  double loss = loss_sum / static_cast<double>(micro_batches.size());
  if (comm && comm->world_size() > 1) loss = comm->all_reduce_value(loss, dist::ReduceOp::Average);
  LLM_CHECK(std::isfinite(loss), "the loss is ", loss, "; stopping (the last checkpoint is kept as it was). Lower "
            "optim.lr or check the data");
  return loss;
}

void check_grad_norm(double norm) {
  LLM_CHECK(std::isfinite(norm), "the gradient norm is ", norm, "; stopping (the last checkpoint is kept as it was)");
}
}  // namespace

double training_step(models::CausalLM& model, optim::AdamW& optimizer, const std::vector<data::Batch>& micro_batches,
                     float lr, float grad_clip, double* grad_norm, dist::DataParallel* dp) {
  optimizer.zero_grad();
  profile::mark("zero grad");
  const double loss = accumulate_gradients(model, micro_batches, dp ? &dp->communicator() : nullptr, [dp] {
    if (dp) dp->sync_next_backward();
  });
  if (dp) {
    dp->finish();  // every rank now holds the same averaged gradients
    profile::mark("gradient all-reduce (wait)");
  }
  const double norm = optim::grad_norm(model.parameters());
  profile::mark("gradient norm");
  check_grad_norm(norm);
  optimizer.step(lr, optim::clip_scale(norm, grad_clip));
  profile::mark("AdamW step");
  if (grad_norm) *grad_norm = norm;
  return loss;
}

double training_step(models::CausalLM& model, optim::ZeroAdamW& optimizer, const std::vector<data::Batch>& micro_batches,
                     float lr, float grad_clip, double* grad_norm) {
  optimizer.zero_grad();
  profile::mark("zero grad");
  const double loss = accumulate_gradients(model, micro_batches, &optimizer.communicator(), nullptr);
  const double norm = optimizer.sync_gradients();
  profile::mark("gradient reduce-scatter + norm");
  check_grad_norm(norm);
  optimizer.step(lr, optim::clip_scale(norm, grad_clip));
  profile::mark("AdamW step (ZeRO-1, all-gather)");
  if (grad_norm) *grad_norm = norm;
  return loss;
}

data::Batch Trainer::next_batch() { return sft_train_ ? sft_train_->next() : train_loader_->next(); }

std::vector<int64_t> Trainer::data_state() const {
  if (sft_train_) return {sft_train_->batches()};
  if (policy_trainer_) return {prompt_batches_};
  return flatten(train_loader_->state());
}

void Trainer::set_data_state(const std::vector<int64_t>& state) {
  if (sft_train_ || policy_trainer_) {
    LLM_CHECK(state.size() == 1, "checkpoint: its data position has ", state.size(), " values; a ", config_.method,
              " run keeps 1 (was it written by another kind of run?)");
    if (sft_train_) sft_train_->set_batches(state[0]);
    else prompt_batches_ = state[0];
    return;
  }
  train_loader_->set_state(unflatten(state));
}

double Trainer::train_step() {
  try {
    if (policy_trainer_) {
      std::vector<const Record*> prompts;
      // Rank r takes prompts r*P .. r*P + P - 1 of the global batch of world*P prompts.
      const int64_t first = (prompt_batches_ * comm_->world_size() + comm_->rank()) * config_.prompts_per_step;
      for (int64_t i = 0; i < config_.prompts_per_step; ++i)
        prompts.push_back(&prompts_[static_cast<size_t>(prompt_order_->at(first + i))]);
      ++prompt_batches_;
      const uint64_t sample_seed = config_.seed ^ (0xd1b54a32d192ed03ULL * static_cast<uint64_t>(step_ + 1));
      last_rl_ = policy_trainer_->step(*optimizer_, prompts, schedule_.at(step_), sample_seed,
                                       static_cast<uint64_t>(first * config_.group_size));
      last_grad_norm_ = last_rl_.grad_norm;
      return last_rl_.loss;
    }
    std::vector<data::Batch> micro;
    for (int64_t i = 0; i < config_.grad_accum; ++i) micro.push_back(next_batch());
    const float lr = schedule_.at(step_);
    if (zero_) return training_step(*model_, *zero_, micro, lr, config_.grad_clip, &last_grad_norm_);
    return training_step(*model_, *optimizer_, micro, lr, config_.grad_clip, &last_grad_norm_, dp_.get());
  } catch (const Error& e) {
    throw Error("step " + std::to_string(step_ + 1) + ": " + e.what());
  }
}

bool Trainer::has_validation() const {
  return config_.eval_interval > 0 && (val_loader_ || sft_val_ || (policy_trainer_ && !val_prompts_.empty()));
}

double Trainer::evaluate() {
  if (policy_trainer_) {
    const std::vector<Record>& pool = val_prompts_.empty() ? prompts_ : val_prompts_;
    std::vector<const Record*> prompts;
    for (size_t i = 0; i < pool.size() && static_cast<int64_t>(i) < config_.eval_prompts; ++i) prompts.push_back(&pool[i]);
    return policy_trainer_->evaluate(prompts);
  }
  if (!val_loader_ && !sft_val_) return 0;
  NoGradGuard no_grad;
  if (val_loader_) val_loader_->reset();
  else sft_val_->set_batches(0);
  double total = 0;
  for (int64_t i = 0; i < config_.eval_batches; ++i) {
    const data::Batch b = on_device(val_loader_ ? val_loader_->next() : sft_val_->next(), device_);
    models::ForwardOptions options;
    options.doc = b.doc;
    options.positions = b.positions;
    total += ops::cross_entropy(model_->forward(b.inputs, options), b.targets).item();
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
    const Tensor logits =
        model_->forward(Tensor::from_vector(ctx, Shape{1, n}).to(device_)).to(Device::cpu()).to(DType::F32);
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
  ck.optimizer = zero_ ? zero_->state() : optimizer_->state();  // ZeRO: gathered from every rank
  ck.step = step_;
  ck.tokens = tokens_;
  ck.loader_state = data_state();
  ck.train_config_yaml = to_yaml(config_);
  // The adapters' dropout counters, so a resumed run draws the same masks.
  if (lora_)
    for (const auto& [path, layer] : nn::lora_layers(*model_)) ck.rng_state.push_back(layer->lora.calls);
  ck.tokenizer = tokenizer_spec_;
  const std::string path = checkpoint_path(config_.checkpoint_dir, step_);
  const std::string adapter_dir = (fs::path(config_.checkpoint_dir) / "adapter").string();
  on_root([&] {
    save_checkpoint(path, ck);
    prune_checkpoints(config_.checkpoint_dir, config_.keep_last);
    // The adapters on their own, in PEFT's layout (llm-convert --merge-lora folds them into the base).
    if (lora_) io::save_lora_adapter(adapter_dir, *model_, *lora_, config_.init_from);
  });
  log_ << "checkpoint: " << path << "\n";
  if (lora_) log_ << "adapter: " << adapter_dir << "\n";
}

std::vector<StepRecord> Trainer::run() {
  std::ofstream metrics;  // rank 0 only
  on_root([&] {
    fs::create_directories(config_.checkpoint_dir);
    const std::string metrics_path =
        config_.metrics_path.empty() ? (fs::path(config_.checkpoint_dir) / "metrics.jsonl").string() : config_.metrics_path;
    metrics.open(metrics_path, step_ == 0 ? std::ios::trunc : std::ios::app);
    LLM_CHECK(metrics.good(), metrics_path, ": cannot write the metrics file");
  });

  const int64_t tokens_per_step = this->tokens_per_step();
  int64_t last_step = config_.max_steps;
  if (config_.max_tokens > 0 && !config_.is_rl())
    last_step = std::min(last_step, (config_.max_tokens + tokens_per_step - 1) / tokens_per_step);
  std::vector<StepRecord> records;
  const auto run_start = clock_type::now();
  const int64_t first_step = step_;
  double window_seconds = 0;
  int64_t window_tokens = 0;
  auto log_validation = [&] {  // rank 0 only
    if (!is_root()) return;
    const double val = evaluate();
    const char* what = config_.is_rl() ? "val reward" : "val loss";
    char text[96];
    std::snprintf(text, sizeof(text), "step %lld: %s %.4f", static_cast<long long>(step_), what, val);
    log_ << text << std::endl;
    metrics << nlohmann::json{{"step", step_}, {config_.is_rl() ? "val_reward" : "val_loss", val}}.dump() << "\n";
  };
  // An RL run starts from a trained model: its starting reward is the baseline the run must beat.
  if (config_.is_rl() && has_validation() && step_ == 0) log_validation();
  while (step_ < last_step) {
    const auto t0 = clock_type::now();
    const double lr = schedule_.at(step_);
    const bool profiled = step_ + 1 == config_.profile_step;
    if (profiled) profile::start(model_device(*model_));
    const double loss = train_step();
    ++step_;
    if (profiled) {
      const std::vector<profile::Row> rows = profile::stop();
      log_ << "step " << step_ << ", time per op (log.profile_step):\n" << profile::format(rows, 1) << std::flush;
    }
    // RL steps count the completion tokens they sampled (and spend most of their time sampling them).
    const int64_t step_tokens = config_.is_rl() ? std::llround(last_rl_.completion_length * static_cast<double>(
                                                      config_.prompts_per_step * config_.group_size))
                                                : tokens_per_step;
    tokens_ += step_tokens;
    const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    window_seconds += seconds;
    window_tokens += step_tokens;

    StepRecord r;
    r.step = step_;
    r.loss = loss;
    r.lr = lr;
    r.grad_norm = last_grad_norm_;
    r.tokens_per_s = static_cast<double>(step_tokens) / seconds;
    r.mfu = config_.is_rl() ? 0.0 : model_->config().training_flops_per_token(config_.seq_len) * r.tokens_per_s / peak_flops_;
    r.rl = last_rl_;
    records.push_back(r);
    nlohmann::json line = {{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                           {"tokens_per_s", r.tokens_per_s}};
    if (config_.is_rl()) {
      line.update({{"reward_mean", r.rl.reward_mean}, {"reward_std", r.rl.reward_std}, {"kl", r.rl.kl},
                   {"clip_fraction", r.rl.clip_fraction}, {"completion_length", r.rl.completion_length},
                   {"entropy", r.rl.entropy}});
    } else {
      line["mfu"] = r.mfu;
    }
    if (is_root()) metrics << line.dump() << "\n";

    if (config_.log_interval > 0 && (step_ % config_.log_interval == 0 || step_ == last_step || step_ == first_step + 1)) {
      const double tps = window_tokens / window_seconds;
      const double elapsed = std::chrono::duration<double>(clock_type::now() - run_start).count();
      const double eta = elapsed / static_cast<double>(step_ - first_step) * static_cast<double>(last_step - step_);
      char text[320];
      if (config_.is_rl())
        std::snprintf(text, sizeof(text),
                      "step %lld/%lld | reward %.3f ± %.3f | kl %.4f | clip %.3f | len %.1f | entropy %.3f | loss %.4f | "
                      "lr %.2e | norm %.3f | %.0f tok/s | ETA %s",
                      static_cast<long long>(step_), static_cast<long long>(last_step), last_rl_.reward_mean,
                      last_rl_.reward_std, last_rl_.kl, last_rl_.clip_fraction, last_rl_.completion_length,
                      last_rl_.entropy, loss, lr, last_grad_norm_, tps, format_duration(eta).c_str());
      else
        std::snprintf(text, sizeof(text),
                      "step %lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | MFU %.1f%% | ETA %s",
                      static_cast<long long>(step_), static_cast<long long>(last_step), loss, lr, last_grad_norm_, tps,
                      100.0 * model_->config().training_flops_per_token(config_.seq_len) * tps / peak_flops_,
                      format_duration(eta).c_str());
      log_ << text << std::endl;
      window_seconds = 0;
      window_tokens = 0;
    }
    if (has_validation() && (step_ % config_.eval_interval == 0 || step_ == last_step)) log_validation();
    if (is_root() && tokenizer_ && config_.sample_interval > 0 && (step_ % config_.sample_interval == 0 || step_ == last_step))
      log_ << "sample at step " << step_ << ":\n" << sample(config_.sample_tokens) << "\n---" << std::endl;
    if (is_root()) metrics.flush();
    // A signal may reach the ranks in different steps: stop together, at the first step any saw it.
    const bool stopping = comm_->all_reduce_value<int32_t>(stop_requested_.load() ? 1 : 0, dist::ReduceOp::Sum) > 0;
    if (stopping || step_ == last_step || (config_.checkpoint_interval > 0 && step_ % config_.checkpoint_interval == 0))
      save_checkpoint_now();
    if (stopping) {
      log_ << "stopped by signal at step " << step_ << "\n";
      stop_requested_ = false;  // consumed
      break;
    }
  }
  return records;
}

}  // namespace llm::train
