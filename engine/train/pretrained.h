// Loading a model from any of the formats we read: a Hugging Face directory (engine/io/hf_model.h),
// a native HDF5 checkpoint (engine/train/checkpoint.h) or a llama2.c .bin (engine/io/llama2c.h).
// It lives here, above llm_io, because native checkpoints belong to the trainer.
#pragma once
#include <memory>
#include <string>

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

}  // namespace llm::train
