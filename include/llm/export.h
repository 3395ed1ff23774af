/* Symbol visibility for libllm.so: only what the public headers declare is exported. C and C++. */
#ifndef LLM_EXPORT_H
#define LLM_EXPORT_H
#if defined(__GNUC__) || defined(__clang__)
#define LLM_API __attribute__((visibility("default")))
#else
#define LLM_API
#endif
#endif
