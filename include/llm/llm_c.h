/* The llm SDK for C (and other languages through their C FFI): the calls of include/llm/llm.h over
 * opaque handles. Every call returns LLM_OK or an error code, with the message in llm_last_error().
 * Strings and arrays the library returns are the caller's, freed with llm_free.
 *
 *   llm_model* m;
 *   if (llm_model_load("stories260K.bin", "tok512.model", 0, &m) != LLM_OK) fprintf(stderr, "%s\n", llm_last_error());
 *   llm_generate_options o = llm_generate_default_options();
 *   char* text;
 *   llm_generate(m, "Once upon a time", &o, NULL, NULL, &text);
 *   puts(text);
 *   llm_free(text);
 *   llm_model_free(m);
 */
#ifndef LLM_C_H
#define LLM_C_H

#include <stddef.h>
#include <stdint.h>

#include "export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum llm_status {
  LLM_OK = 0,
  LLM_ERROR_INVALID_ARGUMENT = 1, /* a NULL handle or pointer where one is required */
  LLM_ERROR = 2                   /* the call failed: bad file, bad option, bad input (see llm_last_error) */
} llm_status;

/* The message of the last failed call on this thread ("" when none failed). Valid until the next call. */
LLM_API const char* llm_last_error(void);
/* Frees a string or array the library returned (NULL is ignored). */
LLM_API void llm_free(void* p);

typedef struct llm_model llm_model;

/* Loads a Hugging Face directory, an llm checkpoint (.h5) or a llama2.c .bin. tokenizer: a spec when
 * none comes with the model, or NULL. threads: 0 for all cores. */
LLM_API llm_status llm_model_load(const char* path, const char* tokenizer, int threads, llm_model** out);
LLM_API void llm_model_free(llm_model* model);

typedef struct llm_generate_options {
  int64_t max_tokens;
  float temperature; /* 0: greedy */
  int64_t top_k;
  float top_p;
  float min_p;
  float repeat_penalty;
  int64_t repeat_last_n;
  uint64_t seed;
  const char* const* stop; /* n_stop stop strings, or NULL */
  size_t n_stop;
  int stop_at_eos; /* non-zero: the end-of-text token ends generation */
} llm_generate_options;

/* The defaults (llm-generate's): 128 tokens, temperature 0.8, top-k 40, top-p 0.95, min-p 0.05. */
LLM_API llm_generate_options llm_generate_default_options(void);

/* Receives generated text (length bytes, not NUL-terminated) as it becomes final; return non-zero to stop. */
typedef int (*llm_stream_callback)(const char* text, size_t length, void* user_data);

/* Generates a continuation of prompt. options NULL: the defaults; callback may be NULL; out_text (may
 * be NULL) receives the whole generated text. */
LLM_API llm_status llm_generate(llm_model* model, const char* prompt, const llm_generate_options* options,
                                llm_stream_callback callback, void* user_data, char** out_text);

typedef struct llm_chat_message {
  const char* role; /* "system", "user" or "assistant" */
  const char* content;
} llm_chat_message;

/* The assistant's reply to n messages, with the model's chat template. */
LLM_API llm_status llm_chat(llm_model* model, const llm_chat_message* messages, size_t n,
                            const llm_generate_options* options, llm_stream_callback callback, void* user_data,
                            char** out_text);

LLM_API llm_status llm_tokenize(llm_model* model, const char* text, int add_bos, int32_t** out_ids, size_t* out_n);
LLM_API llm_status llm_detokenize(llm_model* model, const int32_t* ids, size_t n, char** out_text);

/* Sum of log p(token | preceding tokens) over the text's tokens (natural log), and how many were scored. */
LLM_API llm_status llm_score(llm_model* model, const char* text, double* out_log_likelihood, int64_t* out_tokens);

/* Task helpers (options NULL: the defaults). */
LLM_API llm_status llm_summarize(llm_model* model, const char* text, const llm_generate_options* options, char** out_text);
LLM_API llm_status llm_translate(llm_model* model, const char* text, const char* target_language,
                                 const llm_generate_options* options, char** out_text);
LLM_API llm_status llm_complete_code(llm_model* model, const char* code, const llm_generate_options* options, char** out_text);

/* Trains from a YAML recipe with "section.key=value" overrides, as llm-train does. resume: NULL, "auto"
 * or a checkpoint. out_steps / out_final_loss may be NULL. */
LLM_API llm_status llm_pretrain(const char* config_path, const char* const* overrides, size_t n_overrides, const char* resume,
                             int64_t* out_steps, double* out_final_loss);
/* The same for a fine-tuning recipe (finetune.method sft, grpo or reinforce), as llm-finetune does. */
LLM_API llm_status llm_finetune(const char* config_path, const char* const* overrides, size_t n_overrides, const char* resume,
                                int64_t* out_steps, double* out_final_loss);

#ifdef __cplusplus
}
#endif

#endif /* LLM_C_H */
