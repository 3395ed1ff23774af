#include "engine/generate/chat.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"

namespace llm::generate {

namespace {

// transformers' historical default template (ChatML), written out here.
const char* kChatML =
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// A special token in tokenizer_config.json: a string, {"content": "..."} or null.
std::string token_field(const nlohmann::json& config, const char* key, const std::string& where) {
  if (!config.contains(key) || config[key].is_null()) return "";
  const nlohmann::json& t = config[key];
  if (t.is_string()) return t.get<std::string>();
  LLM_CHECK(t.is_object() && t.contains("content") && t["content"].is_string(), where, ": ", key,
            " must be a string or an object with a \"content\" string");
  return t["content"].get<std::string>();
}

// Templates commonly trim message content.
std::string trimmed(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(" \t\r\n") + 1 - b);
}

}  // namespace

ChatTemplate::ChatTemplate() : ChatTemplate(kChatML, "", "", "built-in ChatML") {}

ChatTemplate::ChatTemplate(const std::string& jinja_source, std::string bos_token, std::string eos_token, std::string origin)
    : template_(std::make_shared<jinja::Template>(jinja_source, origin)),
      source_(jinja_source),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)),
      origin_(std::move(origin)) {}

ChatTemplate ChatTemplate::of_model(const std::string& model_path) {
  const std::filesystem::path p(model_path);
  if (std::filesystem::is_directory(p)) return from_model_dir(model_path);
  return from_model_dir(p.has_parent_path() ? p.parent_path().string() : ".");
}

bool ChatTemplate::is_default() const { return source_ == kChatML && origin_ == "built-in ChatML"; }

ChatTemplate ChatTemplate::from_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path config_path = fs::path(dir) / "tokenizer_config.json";
  nlohmann::json config = nlohmann::json::object();
  if (fs::is_regular_file(config_path)) {
    config = nlohmann::json::parse(data::read_file(config_path.string()), nullptr, false);
    LLM_CHECK(!config.is_discarded() && config.is_object(), config_path.string(), ": not a JSON object");
  }
  const std::string where = config_path.string();
  const std::string bos = token_field(config, "bos_token", where), eos = token_field(config, "eos_token", where);
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    const nlohmann::json& t = config["chat_template"];
    if (t.is_string()) return ChatTemplate(t.get<std::string>(), bos, eos, where + ": chat_template");
    LLM_CHECK(t.is_array(), where, ": chat_template must be a string or a list of {\"name\", \"template\"} objects");
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        return ChatTemplate(e["template"].get<std::string>(), bos, eos, where + ": chat_template \"default\"");
    throw Error(where + ": chat_template lists named templates but none named \"default\"");
  }
  const fs::path jinja_file = fs::path(dir) / "chat_template.jinja";  // newer transformers save it apart
  if (fs::is_regular_file(jinja_file))
    return ChatTemplate(data::read_file(jinja_file.string()), bos, eos, jinja_file.string());
  ChatTemplate chatml;
  chatml.bos_token_ = bos;
  chatml.eos_token_ = eos;
  return chatml;
}

std::string ChatTemplate::render(const std::vector<Message>& messages, bool add_generation_prompt) const {
  jinja::Value::List list;
  for (const Message& m : messages) {
    jinja::Value::Dict d;
    d.items = {{"role", jinja::Value(m.role)}, {"content", jinja::Value(m.content)}};
    list.emplace_back(std::move(d));
  }
  jinja::Value::Dict context;
  context.items = {{"messages", jinja::Value(std::move(list))},
                   {"add_generation_prompt", jinja::Value(add_generation_prompt)},
                   {"tools", jinja::Value(nullptr)}};
  if (!bos_token_.empty()) context.set("bos_token", jinja::Value(bos_token_));
  if (!eos_token_.empty()) context.set("eos_token", jinja::Value(eos_token_));
  return template_->render(jinja::Value(std::move(context)));
}

std::vector<int32_t> ChatTemplate::encode(const data::Tokenizer& tokenizer, const std::vector<Message>& messages,
                                          bool add_generation_prompt) const {
  std::vector<int32_t> ids = tokenizer.encode_with_special(render(messages, add_generation_prompt));
  // Said here, where the template is known: the generator's "prompt has no tokens" names neither it nor its file.
  LLM_CHECK(!ids.empty(), origin_, ": the template rendered nothing for a conversation of ", messages.size(), " message(s)");
  return ids;
}

ChatTemplate::Masked ChatTemplate::encode_with_mask(const data::Tokenizer& tokenizer,
                                                    const std::vector<Message>& messages) const {
  const std::string full = render(messages, false);
  const std::vector<std::string> specials = tokenizer.special_tokens();
  // How far a rendering of a prefix of the conversation agrees with the whole one (a plain prefix
  // test would fail on templates that close the text only at the very end, as Phi-3 adds eos there),
  // backed off to the start of a special token the point would cut ("<|end|>" against "<|user|>").
  auto agreed = [&](const std::vector<Message>& head, bool add_generation_prompt) {
    const std::string part = render(head, add_generation_prompt);
    size_t n = 0;
    while (n < part.size() && n < full.size() && part[n] == full[n]) ++n;
    for (const std::string& sp : specials)
      for (size_t p = n >= sp.size() ? n - sp.size() + 1 : 0; p < n; ++p)
        if (full.compare(p, sp.size(), sp) == 0 || part.compare(p, sp.size(), sp) == 0) {
          n = p;
          break;
        }
    return n;
  };
  Masked out;
  size_t done = 0;  // the text of `full` the ids cover so far
  auto extend_to = [&](size_t end, bool assistant) {
    const std::vector<int32_t> ids = tokenizer.encode_with_special(std::string_view(full).substr(done, end - done));
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.assistant_mask.insert(out.assistant_mask.end(), ids.size(), assistant ? 1 : 0);
    done = end;
  };
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant") continue;
    const std::vector<Message> head(messages.begin(), messages.begin() + static_cast<long>(i));
    std::vector<Message> with = head;
    with.push_back(messages[i]);
    const size_t begin = agreed(head, true), end = agreed(with, false);
    // The reply must lie in its span: otherwise the template rewrites turns depending on later ones.
    LLM_CHECK(begin >= done && end >= begin && full.substr(begin, end - begin).find(trimmed(messages[i].content)) != std::string::npos,
              origin_, ": cannot find where assistant message ", i, " lies in the rendered conversation (the template ",
              "renders the conversation's prefixes differently from the whole), so no assistant mask can be computed");
    extend_to(begin, false);  // everything up to and including the assistant header
    extend_to(end, true);     // the reply and its end-of-turn marker
  }
  extend_to(full.size(), false);
  return out;
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  std::vector<std::string> out;
  if (!eos_token_.empty()) out.push_back(eos_token_);
  for (const char* marker : {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>"})
    if (source_.find(marker) != std::string::npos && std::find(out.begin(), out.end(), marker) == out.end())
      out.emplace_back(marker);
  return out;
}

}  // namespace llm::generate
