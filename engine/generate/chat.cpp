#include "engine/generate/chat.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"

namespace llm::generate {

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Llama2: return "llama2";
    case ChatFormat::Llama3: return "llama3";
    case ChatFormat::Zephyr: return "zephyr";
  }
  return "?";
}

ChatFormat detect_chat_format(const std::string& t) {
  if (t.find("<|im_start|>") != std::string::npos) return ChatFormat::ChatML;
  if (t.find("<|start_header_id|>") != std::string::npos) return ChatFormat::Llama3;
  if (t.find("[INST]") != std::string::npos) return ChatFormat::Llama2;
  if (t.find("<|user|>") != std::string::npos) return ChatFormat::Zephyr;
  return ChatFormat::ChatML;
}

std::string read_chat_template(const std::string& model_dir) {
  const std::filesystem::path p = std::filesystem::path(model_dir) / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(p)) return "";
  const nlohmann::json j = nlohmann::json::parse(data::read_file(p.string()), nullptr, false);
  LLM_CHECK(!j.is_discarded(), p.string(), ": not valid JSON");
  if (!j.contains("chat_template")) return "";
  const nlohmann::json& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  // A list of named templates: the "default" one.
  if (t.is_array())
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template")) return e["template"].get<std::string>();
  return "";
}

namespace {
// Builds the id sequence piece by piece: markers become special ids when the vocabulary has them.
class ChatEncoder {
 public:
  explicit ChatEncoder(const data::Tokenizer& tok) : tok_(tok) {}
  void marker(const std::string& m) {
    const int32_t id = tok_.special_id(m);
    if (id >= 0) {
      ids_.push_back(id);
    } else {
      text(m);
    }
  }
  void text(const std::string& t) {
    const std::vector<int32_t> e = tok_.encode(t);
    ids_.insert(ids_.end(), e.begin(), e.end());
  }
  void bos() {
    if (tok_.bos_id() >= 0) ids_.push_back(tok_.bos_id());
  }
  std::vector<int32_t> take() { return std::move(ids_); }

 private:
  const data::Tokenizer& tok_;
  std::vector<int32_t> ids_;
};
}  // namespace

std::vector<int32_t> encode_chat(const data::Tokenizer& tokenizer, ChatFormat format, const std::vector<Message>& messages,
                                 bool add_generation_prompt) {
  for (const Message& m : messages)
    LLM_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", "chat: unknown role '", m.role,
              "' (expected system, user or assistant)");
  ChatEncoder e(tokenizer);
  switch (format) {
    case ChatFormat::ChatML:
      for (const Message& m : messages) {
        e.marker("<|im_start|>");
        e.text(m.role + "\n" + m.content);
        e.marker("<|im_end|>");
        e.text("\n");
      }
      if (add_generation_prompt) {
        e.marker("<|im_start|>");
        e.text("assistant\n");
      }
      break;
    case ChatFormat::Llama3:
      e.bos();
      for (const Message& m : messages) {
        e.marker("<|start_header_id|>");
        e.text(m.role);
        e.marker("<|end_header_id|>");
        e.text("\n\n" + m.content);
        e.marker("<|eot_id|>");
      }
      if (add_generation_prompt) {
        e.marker("<|start_header_id|>");
        e.text("assistant");
        e.marker("<|end_header_id|>");
        e.text("\n\n");
      }
      break;
    case ChatFormat::Llama2: {
      // The system prompt goes inside the first [INST] block; each user/assistant pair is one <s>…</s>.
      std::string system;
      size_t i = 0;
      if (!messages.empty() && messages[0].role == "system") system = messages[i++].content;
      bool first = true;
      for (; i < messages.size(); ++i) {
        const Message& m = messages[i];
        if (m.role == "user") {
          e.bos();
          std::string body = m.content;
          if (first && !system.empty()) body = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + body;
          e.text("[INST] " + body + " [/INST]");
          first = false;
        } else {
          e.text(" " + m.content + " ");
          if (tokenizer.eot_id() >= 0) e.marker(tokenizer.token_text(tokenizer.eot_id()));
        }
      }
      break;
    }
    case ChatFormat::Zephyr:
      for (const Message& m : messages) {
        e.marker("<|" + m.role + "|>");
        e.text("\n" + m.content);
        e.marker("</s>");
        e.text("\n");
      }
      if (add_generation_prompt) {
        e.marker("<|assistant|>");
        e.text("\n");
      }
      break;
  }
  return e.take();
}

std::vector<std::string> chat_stop_strings(ChatFormat format) {
  switch (format) {
    case ChatFormat::ChatML: return {"<|im_end|>", "<|im_start|>"};
    case ChatFormat::Llama3: return {"<|eot_id|>", "<|start_header_id|>"};
    case ChatFormat::Llama2: return {"[INST]", "</s>"};
    case ChatFormat::Zephyr: return {"</s>", "<|user|>"};
  }
  return {};
}

}  // namespace llm::generate
