/* The C API from C: load the stories260K fixture, generate with streaming (and stop from the callback),
 * tokenize/detokenize, score, chat, and each error path. Exits non-zero with a message on failure. */
#include <llm/llm_c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

typedef struct {
  char text[4096];
  size_t length;
  int calls, stop_after;
} stream_state;

static int on_text(const char* text, size_t length, void* user) {
  stream_state* s = (stream_state*)user;
  if (s->length + length < sizeof(s->text)) {
    memcpy(s->text + s->length, text, length);
    s->length += length;
    s->text[s->length] = '\0';
  }
  ++s->calls;
  return s->stop_after > 0 && s->calls >= s->stop_after; /* non-zero: stop */
}

int main(void) {
  const char* model_path = LLM_SOURCE_DIR "/tests/fixtures/stories260K/stories260K.bin";
  const char* tokenizer = LLM_SOURCE_DIR "/data/assets/stories260K/tok512.model";
  llm_model* m = NULL;
  if (llm_model_load(model_path, tokenizer, 0, &m) != LLM_OK) {
    fprintf(stderr, "load failed: %s\n", llm_last_error());
    return 1;
  }
  CHECK(strcmp(llm_last_error(), "") == 0);

  /* Greedy from BOS: llama2.c's text, streamed and returned alike. */
  llm_generate_options o = llm_generate_default_options();
  CHECK(o.max_tokens == 128 && o.stop_at_eos == 1);
  o.temperature = 0;
  o.max_tokens = 40;
  stream_state s;
  memset(&s, 0, sizeof(s));
  char* text = NULL;
  CHECK(llm_generate(m, "", &o, on_text, &s, &text) == LLM_OK);
  CHECK(text != NULL && strncmp(text, "Once upon a time, there was a little girl named Lily.", 53) == 0);
  CHECK(text != NULL && strcmp(text, s.text) == 0);
  printf("generated: %s\n", text ? text : "(null)");
  llm_free(text);

  /* The callback stops it. */
  memset(&s, 0, sizeof(s));
  s.stop_after = 3;
  CHECK(llm_generate(m, "The little dog", &o, on_text, &s, NULL) == LLM_OK);
  CHECK(s.calls == 3);

  /* Stop strings. */
  const char* stops[] = {"."};
  o.stop = stops;
  o.n_stop = 1;
  o.max_tokens = 100;
  CHECK(llm_generate(m, "The little dog", &o, NULL, NULL, &text) == LLM_OK);
  CHECK(text != NULL && strchr(text, '.') == NULL);
  llm_free(text);
  o.stop = NULL;
  o.n_stop = 0;

  int32_t* ids = NULL;
  size_t n = 0;
  CHECK(llm_tokenize(m, "Once upon a time", 1, &ids, &n) == LLM_OK);
  CHECK(n >= 2 && ids[0] == 1);
  CHECK(llm_detokenize(m, ids + 1, n - 1, &text) == LLM_OK);
  CHECK(text != NULL && strcmp(text, "Once upon a time") == 0);
  llm_free(text);
  llm_free(ids);

  double ll = 0;
  int64_t scored = 0;
  CHECK(llm_score(m, "Once upon a time, there was a little girl.", &ll, &scored) == LLM_OK);
  CHECK(ll < 0 && scored > 5);

  llm_chat_message msgs[2] = {{"system", "Be brief."}, {"user", "Tell me a story."}};
  o.max_tokens = 8;
  CHECK(llm_chat(m, msgs, 2, &o, NULL, NULL, &text) == LLM_OK);
  CHECK(text != NULL);
  llm_free(text);
  CHECK(llm_summarize(m, "Lily went to the park.", &o, &text) == LLM_OK);
  llm_free(text);

  /* Errors: a status and a message, never a crash. */
  llm_model* none = NULL;
  CHECK(llm_model_load("/nonexistent.bin", NULL, 0, &none) == LLM_ERROR);
  CHECK(none == NULL && strstr(llm_last_error(), "/nonexistent.bin") != NULL);
  CHECK(llm_generate(NULL, "x", NULL, NULL, NULL, NULL) == LLM_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(llm_last_error(), "model") != NULL);
  o.top_p = 0;
  CHECK(llm_generate(m, "x", &o, NULL, NULL, NULL) == LLM_ERROR);
  CHECK(strstr(llm_last_error(), "top_p") != NULL);
  llm_chat_message bad = {"robot", "x"};
  CHECK(llm_chat(m, &bad, 1, NULL, NULL, NULL, NULL) == LLM_ERROR);
  CHECK(llm_pretrain("/nonexistent.yaml", NULL, 0, NULL, NULL, NULL) == LLM_ERROR);
  llm_free(NULL);

  llm_model_free(m);
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  else printf("c api: all checks passed\n");
  return failures ? 1 : 0;
}
