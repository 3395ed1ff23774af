// Loading a model from any of the formats we read: a Hugging Face directory (engine/io/hf_model.h),
// a native HDF5 checkpoint (engine/train/checkpoint.h) or a llama2.c .bin (engine/io/llama2c.h).
// It lives here, above llm_io, because native checkpoints belong to the trainer.
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "engine/io/hf_model.h"
#include "engine/models/transformer.h"

namespace llm::train {

// `path`: a directory with config.json (HF), an llm checkpoint (.h5), or a llama2.c .bin. The
// tokenizer spec is the HF directory's tokenizer files, the checkpoint's recorded spec, or the .bin's
// directory's tokenizer; "" when there is none. Errors name the file and the tensor or key.
io::LoadedModel load_pretrained(const std::string& path);

// load_pretrained + make_model + load_state: a model ready for inference (evaluation mode).
std::unique_ptr<models::CausalLM> load_model(const std::string& path);
// From an rvalue the model adopts the loaded tensors (Module::adopt_state: no second copy of the
// weights); from an lvalue it copies them.
std::unique_ptr<models::CausalLM> make_loaded_model(const io::LoadedModel& loaded);
std::unique_ptr<models::CausalLM> make_loaded_model(io::LoadedModel&& loaded);

// Where an inference model runs: the CPU (f32), or the first GPU with weights, activations and KV
// cache in bf16 or f32 (matmuls there read bf16 operands either way; f32 keeps everything else fp32).
struct Placement {
  Device device = Device::cpu();
  DType dtype = DType::F32;
};
// The tools' --device (cpu or cuda) and --dtype (bf16 or f32; "" for the device's default: f32 on
// the CPU, bf16 on cuda) values; errors name the flag.
Placement parse_placement(const std::string& device, const std::string& dtype);
// Moves a loaded model there. Clear errors for cuda without a CUDA build or a visible GPU, for bf16
// on the CPU, and for Q8 weights (a CPU path) on cuda.
void place(models::CausalLM& model, const Placement& where, bool quantized_q8);

// What generation needs, as the tools and the SDK load it: the model (Q8 when quantize_q8, placed
// where `where` says) and its tokenizer — tokenizer_spec when given, else the one that came with the
// model. Without either the error names `path` and ends with `missing_tokenizer_hint` (how this
// caller supplies one).
// A tokenizer with more tokens than the model's vocabulary would produce ids the model has no row
// for: an error naming the tokenizer and the model (`spec`, `path`), before any text is encoded.
void check_tokenizer_fits(const data::Tokenizer& tokenizer, const models::ModelConfig& config, const std::string& spec,
                          const std::string& path);

struct InferenceModel {
  std::unique_ptr<models::CausalLM> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
};
InferenceModel load_inference_model(const std::string& path, const std::string& tokenizer_spec, bool quantize_q8,
                                    const std::string& missing_tokenizer_hint, const Placement& where = {});

}  // namespace llm::train
