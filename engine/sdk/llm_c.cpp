// The C API (include/llm/llm_c.h) over the C++ SDK: every call catches, stores the message for
// llm_last_error() and returns a status; returned memory comes from malloc, so llm_free is free().
#include "include/llm/llm_c.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "include/llm/llm.h"

struct llm_model {
  llm::Model model;
};

namespace {

thread_local std::string last_error;

// Runs f, turning exceptions into a status and a message.
template <typename F>
llm_status guarded(F&& f) {
  try {
    last_error.clear();
    f();
    return LLM_OK;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown error";
  }
  return LLM_ERROR;
}

llm_status invalid(const char* what) {
  last_error = std::string(what) + " must not be NULL";
  return LLM_ERROR_INVALID_ARGUMENT;
}

char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (!out) throw std::bad_alloc();
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return out;
}

llm::GenerateOptions to_cpp(const llm_generate_options* o) {
  llm::GenerateOptions g;
  if (!o) return g;
  g.max_tokens = o->max_tokens;
  g.temperature = o->temperature;
  g.top_k = o->top_k;
  g.top_p = o->top_p;
  g.min_p = o->min_p;
  g.repeat_penalty = o->repeat_penalty;
  g.repeat_last_n = o->repeat_last_n;
  g.seed = o->seed;
  for (size_t i = 0; i < o->n_stop; ++i) {
    if (!o->stop || !o->stop[i]) throw llm::Error("llm_generate_options: stop[" + std::to_string(i) + "] is NULL");
    g.stop.emplace_back(o->stop[i]);
  }
  g.stop_at_eos = o->stop_at_eos != 0;
  return g;
}

llm::StreamCallback to_cpp(llm_stream_callback cb, void* user) {
  if (!cb) return nullptr;
  return [cb, user](const std::string& text) { return cb(text.data(), text.size(), user) == 0; };
}

}  // namespace

extern "C" {

const char* llm_last_error(void) { return last_error.c_str(); }

void llm_free(void* p) { std::free(p); }

llm_status llm_model_load(const char* path, const char* tokenizer, int threads, llm_model** out) {
  if (!path) return invalid("path");
  if (!out) return invalid("out");
  *out = nullptr;
  return guarded([&] {
    llm::LoadOptions o;
    if (tokenizer) o.tokenizer = tokenizer;
    o.threads = threads;
    *out = new llm_model{llm::Model::from_pretrained(path, o)};
  });
}

void llm_model_free(llm_model* model) { delete model; }

llm_generate_options llm_generate_default_options(void) {
  const llm::GenerateOptions d;
  return llm_generate_options{d.max_tokens, d.temperature, d.top_k, d.top_p, d.min_p, d.repeat_penalty,
                              d.repeat_last_n, d.seed, nullptr, 0, d.stop_at_eos ? 1 : 0};
}

llm_status llm_generate(llm_model* model, const char* prompt, const llm_generate_options* options,
                        llm_stream_callback callback, void* user_data, char** out_text) {
  if (!model) return invalid("model");
  if (!prompt) return invalid("prompt");
  return guarded([&] {
    const llm::Completion c = model->model.generate(prompt, to_cpp(options), to_cpp(callback, user_data));
    if (out_text) *out_text = copy_string(c.text);
  });
}

llm_status llm_chat(llm_model* model, const llm_chat_message* messages, size_t n, const llm_generate_options* options,
                    llm_stream_callback callback, void* user_data, char** out_text) {
  if (!model) return invalid("model");
  if (!messages && n > 0) return invalid("messages");
  return guarded([&] {
    std::vector<llm::ChatMessage> m;
    for (size_t i = 0; i < n; ++i) {
      if (!messages[i].role || !messages[i].content)
        throw llm::Error("llm_chat: message " + std::to_string(i) + " has a NULL role or content");
      m.push_back({messages[i].role, messages[i].content});
    }
    const llm::Completion c = model->model.chat(m, to_cpp(options), to_cpp(callback, user_data));
    if (out_text) *out_text = copy_string(c.text);
  });
}

llm_status llm_tokenize(llm_model* model, const char* text, int add_bos, int32_t** out_ids, size_t* out_n) {
  if (!model) return invalid("model");
  if (!text) return invalid("text");
  if (!out_ids || !out_n) return invalid("out_ids and out_n");
  return guarded([&] {
    const std::vector<int32_t> ids = model->model.tokenize(text, add_bos != 0);
    int32_t* out = static_cast<int32_t*>(std::malloc(std::max<size_t>(ids.size(), 1) * sizeof(int32_t)));
    if (!out) throw std::bad_alloc();
    std::copy(ids.begin(), ids.end(), out);
    *out_ids = out;
    *out_n = ids.size();
  });
}

llm_status llm_detokenize(llm_model* model, const int32_t* ids, size_t n, char** out_text) {
  if (!model) return invalid("model");
  if (!ids && n > 0) return invalid("ids");
  if (!out_text) return invalid("out_text");
  return guarded([&] { *out_text = copy_string(model->model.detokenize(std::vector<int32_t>(ids, ids + n))); });
}

llm_status llm_score(llm_model* model, const char* text, double* out_log_likelihood, int64_t* out_tokens) {
  if (!model) return invalid("model");
  if (!text) return invalid("text");
  return guarded([&] {
    const llm::Score s = model->model.score(text);
    if (out_log_likelihood) *out_log_likelihood = s.log_likelihood;
    if (out_tokens) *out_tokens = s.tokens;
  });
}

llm_status llm_summarize(llm_model* model, const char* text, const llm_generate_options* options, char** out_text) {
  if (!model) return invalid("model");
  if (!text) return invalid("text");
  if (!out_text) return invalid("out_text");
  return guarded([&] { *out_text = copy_string(model->model.summarize(text, to_cpp(options))); });
}

llm_status llm_translate(llm_model* model, const char* text, const char* target_language, const llm_generate_options* options,
                         char** out_text) {
  if (!model) return invalid("model");
  if (!text || !target_language) return invalid("text and target_language");
  if (!out_text) return invalid("out_text");
  return guarded([&] { *out_text = copy_string(model->model.translate(text, target_language, to_cpp(options))); });
}

llm_status llm_complete_code(llm_model* model, const char* code, const llm_generate_options* options, char** out_text) {
  if (!model) return invalid("model");
  if (!code) return invalid("code");
  if (!out_text) return invalid("out_text");
  return guarded([&] { *out_text = copy_string(model->model.complete_code(code, to_cpp(options))); });
}

namespace {
llm_status run_recipe(const char* name, bool finetune, const char* config_path, const char* const* overrides,
                      size_t n_overrides, const char* resume, int64_t* out_steps, double* out_final_loss) {
  if (!config_path) return invalid("config_path");
  if (!overrides && n_overrides > 0) return invalid("overrides");
  return guarded([&] {
    std::vector<std::string> sets;
    for (size_t i = 0; i < n_overrides; ++i) {
      if (!overrides[i]) throw llm::Error(std::string(name) + ": override " + std::to_string(i) + " is NULL");
      sets.emplace_back(overrides[i]);
    }
    const llm::TrainConfig config = llm::TrainConfig::from_file(config_path, sets);
    llm::TrainOptions o;
    if (resume) o.resume = resume;
    const llm::TrainResult r = finetune ? llm::finetune(config, o) : llm::pretrain(config, o);
    if (out_steps) *out_steps = r.steps;
    if (out_final_loss) *out_final_loss = r.final_loss;
  });
}
}  // namespace

llm_status llm_pretrain(const char* config_path, const char* const* overrides, size_t n_overrides, const char* resume,
                        int64_t* out_steps, double* out_final_loss) {
  return run_recipe("llm_pretrain", false, config_path, overrides, n_overrides, resume, out_steps, out_final_loss);
}

llm_status llm_finetune(const char* config_path, const char* const* overrides, size_t n_overrides, const char* resume,
                        int64_t* out_steps, double* out_final_loss) {
  return run_recipe("llm_finetune", true, config_path, overrides, n_overrides, resume, out_steps, out_final_loss);
}

}  // extern "C"
