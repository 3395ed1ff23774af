// Chat formatting with the model's own template. Hugging Face models carry a Jinja chat_template in
// tokenizer_config.json; it is run by the Jinja interpreter (jinja.h) exactly as transformers'
// apply_chat_template does, and ChatML is used when a model has none.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/generate/jinja.h"

namespace llm::generate {

struct Message {
  std::string role;  // "system", "user", "assistant" (or whatever else the template knows, e.g. "tool")
  std::string content;
};

class ChatTemplate {
 public:
  // The built-in default: ChatML (<|im_start|>role\ncontent<|im_end|>\n).
  ChatTemplate();
  // A Jinja template; bos_token/eos_token are what the template's variables of those names hold ("":
  // undefined). origin names the template in errors.
  ChatTemplate(const std::string& jinja_source, std::string bos_token, std::string eos_token,
               std::string origin = "chat_template");
  // From a model directory: tokenizer_config.json's chat_template (a string, or the entry named
  // "default" of a list of named templates), else a chat_template.jinja file, else ChatML; bos_token
  // and eos_token from tokenizer_config.json (strings or {"content": ...} objects).
  static ChatTemplate from_model_dir(const std::string& dir);
  // The same for a model path as the tools take it: a directory, or a checkpoint / .bin file whose
  // directory holds tokenizer_config.json.
  static ChatTemplate of_model(const std::string& model_path);
  // True when the template is the built-in ChatML default (the model declares none).
  bool is_default() const;

  // Where the template came from ("built-in ChatML" or the file), for messages.
  const std::string& origin() const { return origin_; }

  // The conversation as text; with add_generation_prompt the assistant's turn is opened for the model
  // to continue. Errors from the template (raise_exception, bad syntax) are llm::Error.
  std::string render(const std::vector<Message>& messages, bool add_generation_prompt) const;
  // render(), tokenized with special-token text as single ids (Tokenizer::encode_with_special).
  std::vector<int32_t> encode(const data::Tokenizer& tokenizer, const std::vector<Message>& messages,
                              bool add_generation_prompt) const;

  // Token ids of a whole conversation and, per id, 1 when it belongs to an assistant reply: its content
  // and what the template puts after it before the next message (the end-of-turn marker and, e.g. in
  // ChatML, the newline after it; after the last message also a closing eos), 0 elsewhere (system and
  // user turns, assistant headers). Works for any template by rendering prefixes: a reply spans from
  // where render(messages[:i], add_generation_prompt=true) stops agreeing with the whole rendering to
  // where render(messages[:i+1]) does (backed off to a special token's start). The text is tokenized
  // span by span, so ids equal encode(messages, false) except where the tokenizer would merge across a
  // span boundary (rare: boundaries mostly fall at special tokens; a SentencePiece tokenizer starts
  // each span with its dummy-prefix space). Throws llm::Error when a reply is not inside its span
  // (templates that render earlier turns differently once later ones exist).
  struct Masked {
    std::vector<int32_t> ids;
    std::vector<uint8_t> assistant_mask;
  };
  Masked encode_with_mask(const data::Tokenizer& tokenizer, const std::vector<Message>& messages) const;

  // Text that ends an assistant turn: the eos token and the end-of-turn markers the template uses
  // (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>, </s> ...), as stop strings for generation.
  std::vector<std::string> stop_strings() const;

 private:
  std::shared_ptr<const jinja::Template> template_;  // shared: ChatTemplate copies cheaply
  std::string source_, bos_token_, eos_token_, origin_;
};

}  // namespace llm::generate
