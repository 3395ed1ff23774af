// Chat formatting. Hugging Face models carry a Jinja chat_template in tokenizer_config.json; rather
// than run Jinja, the template is recognised by its markers (as llama.cpp does) as one of the common
// formats below, and ChatML is used when a model has none.
#pragma once
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace llm::generate {

struct Message {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatFormat {
  ChatML,  // <|im_start|>role\ncontent<|im_end|>\n   (Qwen, many fine-tunes; the default)
  Llama2,  // <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s>   (Llama 2, Mistral)
  Llama3,  // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  Zephyr,  // <|user|>\ncontent</s>\n<|assistant|>\n   (Zephyr, TinyLlama-Chat)
};

const char* chat_format_name(ChatFormat f);
// The format a Jinja chat_template text implements (ChatML for an empty or unrecognised one).
ChatFormat detect_chat_format(const std::string& jinja_template);
// The chat_template of a model directory's tokenizer_config.json, or "" when it has none.
std::string read_chat_template(const std::string& model_dir);

// The token ids of a conversation, control markers as the tokenizer's special tokens where it has
// them; with add_generation_prompt the assistant's turn is opened for the model to continue.
std::vector<int32_t> encode_chat(const data::Tokenizer& tokenizer, ChatFormat format, const std::vector<Message>& messages,
                                 bool add_generation_prompt);
// Text that ends an assistant turn in this format (a stop string for generation).
std::vector<std::string> chat_stop_strings(ChatFormat format);

}  // namespace llm::generate
