#include "engine/train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "engine/core/error.h"
#include "engine/train/reward.h"

namespace llm::train {

namespace {
// Every key of every section, with how to read and write it: one table, so parsing, unknown-key
// errors and to_yaml cannot drift apart.
struct Field {
  const char* section;
  const char* key;
  std::function<void(TrainConfig&, const YAML::Node&, const std::string& where)> set;
  std::function<std::string(const TrainConfig&)> get;
};

template <typename T>
T as(const YAML::Node& n, const std::string& where, const char* expected) {
  if (!n.IsScalar())
    throw Error(where + ": expected " + expected + ", got " + (n.IsMap() ? "a map" : n.IsSequence() ? "a list" : "nothing"));
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    throw Error(where + ": expected " + expected + ", got \"" + n.Scalar() + "\"");
  }
}

std::string number_text(double v) {
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}

// A YAML double-quoted scalar (backslashes and quotes escaped), so to_yaml round-trips any text.
std::string yaml_quote(const std::string& v) {
  std::string out = "\"";
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\';
    if (ch == '\n') {
      out += "\\n";
      continue;
    }
    out += ch;
  }
  return out + "\"";
}

Field integer(const char* section, const char* key, int64_t TrainConfig::*member) {
  return {section, key, [member](TrainConfig& c, const YAML::Node& n, const std::string& w) { c.*member = as<int64_t>(n, w, "an integer"); },
          [member](const TrainConfig& c) { return std::to_string(c.*member); }};
}
Field model_integer(const char* key, int64_t models::ModelConfig::*member) {
  return {"model", key, [member](TrainConfig& c, const YAML::Node& n, const std::string& w) { c.model.*member = as<int64_t>(n, w, "an integer"); },
          [member](const TrainConfig& c) { return std::to_string(c.model.*member); }};
}
Field number(const char* section, const char* key, float TrainConfig::*member) {
  return {section, key, [member](TrainConfig& c, const YAML::Node& n, const std::string& w) { c.*member = as<float>(n, w, "a number"); },
          [member](const TrainConfig& c) { return number_text(c.*member); }};
}
Field text(const char* section, const char* key, std::string TrainConfig::*member) {
  return {section, key, [member](TrainConfig& c, const YAML::Node& n, const std::string& w) { c.*member = as<std::string>(n, w, "a string"); },
          [member](const TrainConfig& c) { return yaml_quote(c.*member); }};
}

Field flag(const char* section, const char* key, bool TrainConfig::*member) {
  return {section, key, [member](TrainConfig& c, const YAML::Node& n, const std::string& w) { c.*member = as<bool>(n, w, "true or false"); },
          [member](const TrainConfig& c) { return std::string(c.*member ? "true" : "false"); }};
}
Field reward_number(const char* key, float RewardConfig::*member) {
  return {"reward", key, [member](TrainConfig& c, const YAML::Node& n, const std::string& w) { c.reward.*member = as<float>(n, w, "a number"); },
          [member](const TrainConfig& c) { return number_text(c.reward.*member); }};
}
Field reward_text(const char* key, std::string RewardConfig::*member) {
  return {"reward", key, [member](TrainConfig& c, const YAML::Node& n, const std::string& w) { c.reward.*member = as<std::string>(n, w, "a string"); },
          [member](const TrainConfig& c) { return yaml_quote(c.reward.*member); }};
}

const std::vector<Field>& fields() {
  using C = TrainConfig;
  using M = models::ModelConfig;
  static const std::vector<Field> table = {
      {"model", "arch",
       [](C& c, const YAML::Node& n, const std::string& w) {
         const std::string a = as<std::string>(n, w, "a string");
         if (a == "gpt2") c.model.arch = models::Arch::GPT2;
         else if (a == "llama") c.model.arch = models::Arch::Llama;
         else throw Error(w + ": expected gpt2 or llama, got \"" + a + "\"");
       },
       [](const C& c) { return std::string(c.model.arch_name()); }},
      {"model", "vocab_size",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.vocab_from_data = n.IsScalar() && n.Scalar() == "auto";
         if (!c.vocab_from_data) c.model.vocab_size = as<int64_t>(n, w, "an integer or auto");
       },
       [](const C& c) { return c.vocab_from_data ? std::string("auto") : std::to_string(c.model.vocab_size); }},
      model_integer("max_seq_len", &M::max_seq_len),
      model_integer("dim", &M::dim),
      model_integer("n_layers", &M::n_layers),
      model_integer("n_heads", &M::n_heads),
      model_integer("n_kv_heads", &M::n_kv_heads),
      model_integer("hidden_dim", &M::hidden_dim),
      {"model", "norm_eps", [](C& c, const YAML::Node& n, const std::string& w) { c.model.norm_eps = as<float>(n, w, "a number"); },
       [](const C& c) { return number_text(c.model.norm_eps); }},
      {"model", "rope_theta", [](C& c, const YAML::Node& n, const std::string& w) { c.model.rope_theta = as<float>(n, w, "a number"); },
       [](const C& c) { return number_text(c.model.rope_theta); }},
      {"model", "tie_embeddings", [](C& c, const YAML::Node& n, const std::string& w) { c.model.tie_embeddings = as<bool>(n, w, "true or false"); },
       [](const C& c) { return std::string(c.model.tie_embeddings ? "true" : "false"); }},
      {"model", "attention_bias", [](C& c, const YAML::Node& n, const std::string& w) { c.model.attention_bias = as<bool>(n, w, "true or false"); },
       [](const C& c) { return std::string(c.model.attention_bias ? "true" : "false"); }},
      {"model", "qk_norm", [](C& c, const YAML::Node& n, const std::string& w) { c.model.qk_norm = as<bool>(n, w, "true or false"); },
       [](const C& c) { return std::string(c.model.qk_norm ? "true" : "false"); }},
      model_integer("head_dim", &M::explicit_head_dim),
      text("model", "init_from", &C::init_from),
      text("data", "train", &C::train_data),
      text("data", "val", &C::val_data),
      text("data", "tokenizer", &C::tokenizer),
      {"data", "mode",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.loader_mode = as<std::string>(n, w, "a string");
         if (c.loader_mode != "random" && c.loader_mode != "sequential")
           throw Error(w + ": expected random or sequential, got \"" + c.loader_mode + "\"");
       },
       [](const C& c) { return c.loader_mode; }},
      number("optim", "lr", &C::lr),
      number("optim", "min_lr", &C::min_lr),
      {"optim", "schedule",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.schedule = as<std::string>(n, w, "a string");
         if (c.schedule != "constant" && c.schedule != "cosine" && c.schedule != "linear")
           throw Error(w + ": expected constant, cosine or linear, got \"" + c.schedule + "\"");
       },
       [](const C& c) { return c.schedule; }},
      integer("optim", "warmup_steps", &C::warmup_steps),
      number("optim", "beta1", &C::beta1),
      number("optim", "beta2", &C::beta2),
      number("optim", "eps", &C::eps),
      number("optim", "weight_decay", &C::weight_decay),
      number("optim", "grad_clip", &C::grad_clip),
      integer("train", "batch_size", &C::batch_size),
      integer("train", "seq_len", &C::seq_len),
      integer("train", "grad_accum", &C::grad_accum),
      integer("train", "max_steps", &C::max_steps),
      integer("train", "max_tokens", &C::max_tokens),
      integer("train", "eval_interval", &C::eval_interval),
      integer("train", "eval_batches", &C::eval_batches),
      integer("train", "sample_interval", &C::sample_interval),
      integer("train", "sample_tokens", &C::sample_tokens),
      number("train", "sample_temperature", &C::sample_temperature),
      {"train", "seed", [](C& c, const YAML::Node& n, const std::string& w) { c.seed = as<uint64_t>(n, w, "a non-negative integer"); },
       [](const C& c) { return std::to_string(c.seed); }},
      integer("train", "threads", &C::threads),
      {"train", "device",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.device = as<std::string>(n, w, "a string");
         if (c.device != "cpu" && c.device != "cuda") throw Error(w + ": expected cpu or cuda, got \"" + c.device + "\"");
       },
       [](const C& c) { return c.device; }},
      {"train", "precision",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.precision = as<std::string>(n, w, "a string");
         if (c.precision != "auto" && c.precision != "fp32" && c.precision != "bf16")
           throw Error(w + ": expected auto, fp32 or bf16, got \"" + c.precision + "\"");
       },
       [](const C& c) { return c.precision; }},
      number("train", "peak_tflops", &C::peak_tflops),
      {"kernels", "matmul",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.matmul = as<std::string>(n, w, "a string");
         if (c.matmul != "auto" && c.matmul != "native" && c.matmul != "cublas" && c.matmul != "simple")
           throw Error(w + ": expected auto, native, cublas or simple, got \"" + c.matmul + "\"");
       },
       [](const C& c) { return c.matmul; }},
      {"kernels", "attention",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.attention = as<std::string>(n, w, "a string");
         if (c.attention != "auto" && c.attention != "simple" && c.attention != "tensor_core")
           throw Error(w + ": expected auto, simple or tensor_core, got \"" + c.attention + "\"");
       },
       [](const C& c) { return c.attention; }},
      text("checkpoint", "dir", &C::checkpoint_dir),
      integer("checkpoint", "interval", &C::checkpoint_interval),
      integer("checkpoint", "keep_last", &C::keep_last),
      integer("log", "interval", &C::log_interval),
      integer("log", "profile_step", &C::profile_step),
      text("log", "metrics", &C::metrics_path),
      {"finetune", "method",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.method = as<std::string>(n, w, "a string");
         if (c.method != "pretrain" && c.method != "sft" && c.method != "grpo" && c.method != "reinforce")
           throw Error(w + ": expected pretrain, sft, grpo or reinforce, got \"" + c.method + "\"");
       },
       [](const C& c) { return c.method; }},
      text("finetune", "prompt_key", &C::prompt_key),
      text("finetune", "completion_key", &C::completion_key),
      flag("finetune", "chat_template", &C::chat_template),
      flag("finetune", "packing", &C::packing),
      text("finetune", "system_prompt", &C::system_prompt),
      number("finetune", "val_fraction", &C::val_fraction),
      integer("lora", "rank", &C::lora_rank),
      number("lora", "alpha", &C::lora_alpha),
      number("lora", "dropout", &C::lora_dropout),
      {"lora", "targets",
       [](C& c, const YAML::Node& n, const std::string& w) {
         if (!n.IsSequence()) {
           c.lora_targets = as<std::string>(n, w, "a list of module names or all-linear");
           return;
         }
         c.lora_targets.clear();
         for (const auto& item : n) c.lora_targets += (c.lora_targets.empty() ? "" : ",") + as<std::string>(item, w, "a module name");
       },
       [](const C& c) { return yaml_quote(c.lora_targets); }},
      flag("lora", "rslora", &C::lora_rslora),
      integer("grpo", "prompts_per_step", &C::prompts_per_step),
      integer("grpo", "group_size", &C::group_size),
      integer("grpo", "max_new_tokens", &C::max_new_tokens),
      integer("grpo", "iterations", &C::rl_iterations),
      number("grpo", "temperature", &C::rl_temperature),
      number("grpo", "top_p", &C::rl_top_p),
      number("grpo", "clip_eps", &C::clip_eps),
      number("grpo", "kl_beta", &C::kl_beta),
      integer("grpo", "eval_prompts", &C::eval_prompts),
      reward_number("exact_number", &RewardConfig::exact_number),
      reward_text("answer_key", &RewardConfig::answer_key),
      reward_text("regex", &RewardConfig::regex),
      reward_number("regex_weight", &RewardConfig::regex_weight),
      {"reward", "length_max", [](C& c, const YAML::Node& n, const std::string& w) { c.reward.length_max = as<int64_t>(n, w, "an integer"); },
       [](const C& c) { return std::to_string(c.reward.length_max); }},
      reward_number("length_weight", &RewardConfig::length_weight),
      reward_text("program", &RewardConfig::program),
      reward_number("program_weight", &RewardConfig::program_weight),
      reward_number("program_timeout_s", &RewardConfig::program_timeout_s),
      {"dist", "backend",
       [](C& c, const YAML::Node& n, const std::string& w) {
         c.dist_backend = as<std::string>(n, w, "a string");
         if (c.dist_backend != "auto" && c.dist_backend != "single" && c.dist_backend != "mpi" && c.dist_backend != "nccl")
           throw Error(w + ": expected auto, single, mpi or nccl, got \"" + c.dist_backend + "\"");
       },
       [](const C& c) { return c.dist_backend; }},
      integer("dist", "zero", &C::zero),
      number("dist", "bucket_mb", &C::bucket_mb),
      number("dist", "timeout_s", &C::timeout_s),
  };
  return table;
}

const Field* find_field(const std::string& section, const std::string& key) {
  for (const Field& f : fields())
    if (section == f.section && key == f.key) return &f;
  return nullptr;
}

bool known_section(const std::string& s) {
  for (const Field& f : fields())
    if (s == f.section) return true;
  return false;
}

void check_values(const TrainConfig& c) {
  const std::string& src = c.source;
  auto positive = [&](int64_t v, const char* key) { LLM_CHECK(v > 0, src, ": ", key, ": must be positive, got ", v); };
  positive(c.batch_size, "train.batch_size");
  positive(c.seq_len, "train.seq_len");
  positive(c.grad_accum, "train.grad_accum");
  positive(c.max_steps, "train.max_steps");
  LLM_CHECK(c.lr > 0, src, ": optim.lr: must be positive, got ", c.lr);
  LLM_CHECK(c.min_lr >= 0 && c.min_lr <= c.lr, src, ": optim.min_lr: must be in [0, optim.lr], got ", c.min_lr);
  LLM_CHECK(c.beta1 >= 0 && c.beta1 < 1, src, ": optim.beta1: must be in [0, 1), got ", c.beta1);
  LLM_CHECK(c.beta2 >= 0 && c.beta2 < 1, src, ": optim.beta2: must be in [0, 1), got ", c.beta2);
  LLM_CHECK(c.keep_last >= 1, src, ": checkpoint.keep_last: must be at least 1, got ", c.keep_last);
  // Counts and intervals where 0 means "off" or "default": a negative one is a typo, not a setting.
  auto non_negative = [&](int64_t v, const char* key) {
    LLM_CHECK(v >= 0, src, ": ", key, ": must not be negative, got ", v);
  };
  non_negative(c.warmup_steps, "optim.warmup_steps");
  non_negative(c.max_tokens, "train.max_tokens");
  non_negative(c.eval_interval, "train.eval_interval");
  non_negative(c.sample_interval, "train.sample_interval");
  non_negative(c.threads, "train.threads");
  const int64_t most_threads = std::max<int64_t>(64, 4 * static_cast<int64_t>(std::thread::hardware_concurrency()));
  LLM_CHECK(c.threads <= most_threads, src, ": train.threads: at most ", most_threads,
            " (4x the hardware threads; far more run into the system's thread limit), got ", c.threads);
  non_negative(c.checkpoint_interval, "checkpoint.interval");
  non_negative(c.log_interval, "log.interval");
  non_negative(c.profile_step, "log.profile_step");
  if (c.eval_interval > 0) positive(c.eval_batches, "train.eval_batches");  // 0 batches reported a val loss of 0
  if (c.sample_interval > 0) positive(c.sample_tokens, "train.sample_tokens");
  LLM_CHECK(c.sample_temperature >= 0, src, ": train.sample_temperature: must not be negative, got ", c.sample_temperature);
  // AdamW's own limits (as torch.optim.AdamW checks them); grad_clip 0 turns clipping off.
  LLM_CHECK(c.eps >= 0, src, ": optim.eps: must not be negative, got ", c.eps);
  LLM_CHECK(c.weight_decay >= 0, src, ": optim.weight_decay: must not be negative, got ", c.weight_decay);
  LLM_CHECK(c.grad_clip >= 0, src, ": optim.grad_clip: must be 0 (off) or positive, got ", c.grad_clip);
  LLM_CHECK(c.zero == 0 || c.zero == 1, src, ": dist.zero: expected 0 or 1, got ", c.zero);
  LLM_CHECK(c.bucket_mb > 0, src, ": dist.bucket_mb: must be positive, got ", c.bucket_mb);
  LLM_CHECK(c.timeout_s > 0, src, ": dist.timeout_s: must be positive, got ", c.timeout_s);
  // Deadlines are clock ticks (ns): far past 1e9 s (~30 years) they overflowed, and every collective timed out at once.
  LLM_CHECK(c.timeout_s <= 1e9, src, ": dist.timeout_s: at most 1e9 seconds, got ", c.timeout_s);
  LLM_CHECK(c.peak_tflops >= 0, src, ": train.peak_tflops: must be 0 (the default) or positive, got ", c.peak_tflops);
  LLM_CHECK(!(c.device == "cpu" && c.precision == "bf16"), src, ": train.precision: bf16 needs train.device: cuda "
            "(the CPU computes in fp32)");
  LLM_CHECK(!(c.device == "cuda" && c.dist_backend == "mpi"), src, ": dist.backend: mpi averages CPU buffers; "
            "train.device: cuda needs nccl (or auto)");
  LLM_CHECK(!(c.device == "cpu" && c.dist_backend == "nccl"), src, ": dist.backend: nccl averages GPU buffers; "
            "it needs train.device: cuda (or dist.backend: auto)");
  LLM_CHECK(!c.train_data.empty(), src, ": data.train: missing (",
            c.is_finetune() ? "a JSONL file of examples" : "a prepared directory or a shard glob", ")");
  LLM_CHECK(c.val_fraction >= 0 && c.val_fraction < 1, src, ": finetune.val_fraction: must be in [0, 1), got ", c.val_fraction);
  LLM_CHECK(c.lora_rank >= 0, src, ": lora.rank: must be 0 (off) or positive, got ", c.lora_rank);
  if (c.is_rl()) {
    positive(c.prompts_per_step, "grpo.prompts_per_step");
    positive(c.group_size, "grpo.group_size");
    positive(c.max_new_tokens, "grpo.max_new_tokens");
    positive(c.rl_iterations, "grpo.iterations");
    LLM_CHECK(c.rl_temperature > 0, src, ": grpo.temperature: must be positive, got ", c.rl_temperature);
    LLM_CHECK(c.rl_top_p > 0 && c.rl_top_p <= 1, src, ": grpo.top_p: must be in (0, 1], got ", c.rl_top_p);
    LLM_CHECK(c.clip_eps > 0, src, ": grpo.clip_eps: must be positive, got ", c.clip_eps);
    LLM_CHECK(c.kl_beta >= 0, src, ": grpo.kl_beta: must not be negative, got ", c.kl_beta);
    try {
      const Reward reward(c.reward);  // none enabled, a bad regex, a bad timeout
    } catch (const Error& e) {
      throw Error(src + ": " + e.what());
    }
  }
}
}  // namespace

TrainConfig parse_train_config(const std::string& yaml_text, const std::string& source,
                               const std::vector<std::string>& overrides) {
  TrainConfig c;
  c.source = source;
  c.model.arch = models::Arch::Llama;
  c.model.n_kv_heads = 0;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw Error(source + ": line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  LLM_CHECK(root.IsMap(), source, ": expected sections (model, data, optim, train, checkpoint, log, finetune, lora, grpo, reward, dist, kernels)");
  // A key that is not text (a list or map used as a key) is an error naming the file and line.
  auto key_text = [&](const YAML::Node& key) {
    LLM_CHECK(key.IsScalar(), source, ": line ", key.Mark().line + 1, ": expected a key name, got a ",
              key.IsMap() ? "map" : key.IsSequence() ? "list" : "null");
    return key.Scalar();
  };
  std::set<std::string> seen;  // YAML keeps both copies of a repeated key; the second would win silently
  for (const auto& section : root) {
    const std::string s = key_text(section.first);
    LLM_CHECK(known_section(s), source, ": unknown section '", s, "' (expected model, data, optim, train, checkpoint, log, finetune, lora, grpo, reward, dist, kernels)");
    LLM_CHECK(seen.insert(s).second, source, ": line ", section.first.Mark().line + 1, ": section '", s, "' appears twice");
    LLM_CHECK(section.second.IsMap() || section.second.IsNull(), source, ": ", s, ": expected a map of keys");
    for (const auto& kv : section.second) {
      const std::string k = key_text(kv.first);
      const Field* f = find_field(s, k);
      LLM_CHECK(f, source, ": ", s, ".", k, ": unknown key");
      LLM_CHECK(seen.insert(s + "." + k).second, source, ": line ", kv.first.Mark().line + 1, ": ", s, ".", k,
                " appears twice");
      f->set(c, kv.second, source + ": " + s + "." + k);
    }
  }
  for (const std::string& o : overrides) {
    const size_t eq = o.find('='), dot = o.find('.');
    LLM_CHECK(eq != std::string::npos && dot != std::string::npos && dot < eq, "--set ", o,
              ": expected section.key=value");
    const std::string s = o.substr(0, dot), k = o.substr(dot + 1, eq - dot - 1), v = o.substr(eq + 1);
    const Field* f = find_field(s, k);
    LLM_CHECK(f, "--set ", o, ": unknown key ", s, ".", k);
    YAML::Node value;
    try {
      value = YAML::Load(v.empty() ? "\"\"" : v);
    } catch (const YAML::Exception& e) {
      throw Error("--set " + s + "." + k + ": cannot read the value \"" + v + "\": " + e.msg);
    }
    f->set(c, value, "--set " + s + "." + k);
  }
  if (c.model.n_kv_heads == 0) c.model.n_kv_heads = c.model.n_heads;
  if (c.model.hidden_dim == 0 && c.model.arch == models::Arch::GPT2) c.model.hidden_dim = 4 * c.model.dim;
  if (c.model.arch == models::Arch::GPT2) c.model.tie_embeddings = true;
  check_values(c);
  return c;
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  LLM_CHECK(!std::filesystem::is_directory(path, ec), path, ": a directory, not a config file");
  std::ifstream in(path);
  LLM_CHECK(in.good(), path, ": cannot read the config file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_train_config(ss.str(), path, overrides);
}

std::string to_yaml(const TrainConfig& c) {
  std::string out, section;
  for (const Field& f : fields()) {
    if (section != f.section) {
      section = f.section;
      out += section + ":\n";
    }
    out += std::string("  ") + f.key + ": " + f.get(c) + "\n";
  }
  return out;
}

}  // namespace llm::train
