#include "engine/train/pretrained.h"

#include <filesystem>
#include <map>

#include "engine/core/allocator.h"
#include "engine/core/error.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/llama2c.h"
#include "engine/train/checkpoint.h"

namespace llm::train {

namespace fs = std::filesystem;

io::LoadedModel load_pretrained(const std::string& path) {
  std::error_code ec;
  LLM_CHECK(fs::exists(path, ec), path, ": no such model file or directory");
  if (fs::is_directory(path, ec)) return io::load_hf_directory(path);
  if (io::is_hdf5_file(path)) {
    // load_checkpoint names what is wrong: not a checkpoint, or one that is truncated or corrupt.
    Checkpoint ckpt = load_checkpoint(path, /*weights_only=*/true);
    io::LoadedModel out;
    out.config = ckpt.model_config;
    for (auto& [name, t] : ckpt.weights)
      LLM_CHECK(out.weights.emplace(name, t).second, path, ": tensor '", name, "' is stored twice");
    io::check_weights(out.config, out.weights, path);
    out.tokenizer = ckpt.tokenizer;
    return out;
  }
  const std::string ext = fs::path(path).extension().string();
  LLM_CHECK(ext == ".bin", path,
            ": not a model: expected a Hugging Face directory (config.json + model.safetensors), an llm checkpoint "
            "(.h5) or a llama2.c checkpoint (.bin)");
  return io::load_llama2c(path);
}

std::unique_ptr<models::CausalLM> make_loaded_model(const io::LoadedModel& loaded) {
  auto model = models::make_model_for_loading(loaded.config);
  model->load_state(loaded.weights, /*strict=*/true);
  model->set_training(false);
  return model;
}

std::unique_ptr<models::CausalLM> make_loaded_model(io::LoadedModel&& loaded) {
  auto model = models::make_model_for_loading(loaded.config);
  model->adopt_state(std::move(loaded.weights), /*strict=*/true);
  model->set_training(false);
  return model;
}

std::unique_ptr<models::CausalLM> load_model(const std::string& path) { return make_loaded_model(load_pretrained(path)); }

Placement parse_placement(const std::string& device, const std::string& dtype) {
  Placement p;
  if (device == "cuda") p.device = Device::cuda(0);
  else LLM_CHECK(device == "cpu", "--device: expected cpu or cuda, got \"", device, "\"");
  if (dtype.empty()) p.dtype = p.device.is_cuda() ? DType::BF16 : DType::F32;
  else if (dtype == "bf16") p.dtype = DType::BF16;
  else LLM_CHECK(dtype == "f32", "--dtype: expected bf16 or f32, got \"", dtype, "\"");
  return p;
}

namespace {
void check_placement(const Placement& where, bool quantized_q8) {
  if (where.device.is_cpu()) {
    LLM_CHECK(where.dtype == DType::F32, "--dtype bf16 needs --device cuda (the CPU computes in f32)");
    return;
  }
  LLM_CHECK(!quantized_q8, "--quantize q8 is a CPU path; with --device cuda the weights are bf16 or f32");
  LLM_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA device is visible (or this build has no CUDA backend)");
}
}  // namespace

void place(models::CausalLM& model, const Placement& where, bool quantized_q8) {
  check_placement(where, quantized_q8);
  if (where.device.is_cpu()) return;
  model.to(where.device);
  model.to(where.dtype);
  model.set_activation_dtype(where.dtype);
}

void check_tokenizer_fits(const data::Tokenizer& tokenizer, const models::ModelConfig& config, const std::string& spec,
                          const std::string& path) {
  LLM_CHECK(tokenizer.vocab_size() <= config.vocab_size, spec, ": the tokenizer has ", tokenizer.vocab_size(),
            " tokens but the model ", path, " only ", config.vocab_size, " (a tokenizer of another model?)");
}

namespace {
// A Q8 model from a HF directory, one weight at a time: each Linear's weight is quantized as it is
// read and its f32 copy dropped at once, so the f32 model is never whole in memory.
std::unique_ptr<models::CausalLM> load_q8_streaming(const io::HfDirectory& hf) {
  auto model = models::make_model_for_loading(hf.config());
  std::map<std::string, nn::Linear*> linears;  // by their weight's name
  for (auto& [path, module] : model->named_modules())
    if (auto* linear = dynamic_cast<nn::Linear*>(module)) linears[path + ".weight"] = linear;
  std::map<std::string, Tensor> rest;
  hf.for_each_weight([&](const std::string& name, Tensor t) {
    const auto it = linears.find(name);
    if (it == linears.end()) {
      rest.emplace(name, std::move(t));
      return;
    }
    nn::Linear& linear = *it->second;
    linear.weight = std::move(t);
    linear.quantize_q8();
    linear.release_quantized_fp32_weights();  // kept where the layer cannot be quantized
  });
  model->adopt_state(std::move(rest), /*strict=*/false);  // for_each_weight gave every parameter
  model->quantize_q8();                                    // the output head's copy when it is tied
  model->set_training(false);
  return model;
}
}  // namespace

InferenceModel load_inference_model(const std::string& path, const std::string& tokenizer_spec, bool quantize_q8,
                                    const std::string& missing_tokenizer_hint, const Placement& where) {
  check_placement(where, quantize_q8);  // before any loading time is spent
  InferenceModel m;
  auto attach_tokenizer = [&](const std::string& bundled, const models::ModelConfig& config) {
    const std::string spec = !tokenizer_spec.empty() ? tokenizer_spec : bundled;
    LLM_CHECK(!spec.empty(), path, ": no tokenizer came with the model; ", missing_tokenizer_hint);
    m.tokenizer = data::load_tokenizer(spec);
    check_tokenizer_fits(*m.tokenizer, config, spec, path);
  };
  std::error_code ec;
  if (quantize_q8 && where.device.is_cpu() && fs::is_directory(path, ec)) {
    const io::HfDirectory hf(path);
    attach_tokenizer(hf.tokenizer(), hf.config());
    m.model = load_q8_streaming(hf);
    return m;
  }
  io::LoadedModel loaded = load_pretrained(path);
  attach_tokenizer(loaded.tokenizer, loaded.config);
  m.model = make_loaded_model(std::move(loaded));
  place(*m.model, where, quantize_q8);
  if (quantize_q8) {
    m.model->quantize_q8();
    m.model->release_quantized_fp32_weights();  // only generation follows
  }
  return m;
}

}  // namespace llm::train
