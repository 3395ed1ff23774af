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
std::unique_ptr<models::CausalLM> make_loaded_model(const io::LoadedModel& loaded);

// What generation needs, as the tools and the SDK load it: the model (Q8 when quantize_q8) and its
// tokenizer — tokenizer_spec when given, else the one that came with the model. Without either the
// error names `path` and ends with `missing_tokenizer_hint` (how this caller supplies one).
struct InferenceModel {
  std::unique_ptr<models::CausalLM> model;
  std::unique_ptr<data::Tokenizer> tokenizer;
};
InferenceModel load_inference_model(const std::string& path, const std::string& tokenizer_spec, bool quantize_q8,
                                    const std::string& missing_tokenizer_hint);

}  // namespace llm::train
