// Chat templates: whole templates of the common shapes (written here in the shape of the originals)
// rendered for one conversation and compared with the exact text Jinja2 3.1.6 renders for them, the
// special-token-aware tokenization, the assistant mask and reading templates from a model directory.
#include "engine/generate/chat.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "tests/common/testing.h"

namespace llm::generate {
namespace {

namespace fs = std::filesystem;

const char* kQwen2 = R"J({%- for message in messages %}
    {%- if loop.first and message['role'] != 'system' %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)J";

const char* kLlama2 = R"J({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = false %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if loop.index0 == 0 and system_message != false %}
        {%- set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}
    {%- else %}
        {%- set content = message['content'] %}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + content.strip() + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}
)J";

const char* kLlama3 = R"J({{- bos_token }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)J";

const char* kZephyr = R"J({% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}
)J";

const char* kMistral = R"J({{- bos_token }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'] + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}
)J";

const char* kPhi3 = R"J({% for message in messages %}
{% if message['role'] in ['system', 'user', 'assistant'] %}
{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}
{%- endif %}
{% endfor %}
{% if add_generation_prompt %}
{{ '<|assistant|>\n' }}
{%- else %}
{{ eos_token }}
{%- endif %}
)J";

const char* kGemma = R"J({{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {{ raise_exception('System role not supported') }}
{%- endif -%}
{%- for message in messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' ~ role ~ '\n' ~ message['content'] | trim ~ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
)J";


const std::vector<Message> kWithSystem{{"system", "Be brief."}, {"user", "Hi!"}, {"assistant", " Hello. "}, {"user", "2+2?"}};
const std::vector<Message> kNoSystem(kWithSystem.begin() + 1, kWithSystem.end());

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& tag)
      : path_(fs::temp_directory_path() / ("llm_chat_test_" + tag + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

// A byte-level BPE tokenizer.json without merges (one id per byte, ids 0..255 in GPT-2's byte
// alphabet) plus the chat markers as added tokens from id 256.
std::unique_ptr<data::Tokenizer> marker_tokenizer(const TempDir& dir) {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = direct ? static_cast<uint32_t>(b) : 256 + static_cast<uint32_t>(n++);
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    vocab[s] = b;
  }
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  int id = 256;
  for (const char* m : {"<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>"})
    added.push_back({{"id", id++}, {"content", m}, {"special", true}});
  nlohmann::ordered_json j = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::ordered_json::array()}}},
                              {"normalizer", nullptr},
                              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                              {"added_tokens", added}};
  return data::load_tokenizer(dir.write("tokenizer.json", j.dump()));
}

TEST(ChatTemplate, QwenStyleChatMLWithADefaultSystemPrompt) {
  const ChatTemplate t(kQwen2, "", "<|im_end|>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n Hello. "
            "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render(kNoSystem, false),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\n Hello. <|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n");
}

TEST(ChatTemplate, Llama2WithSysBlockInTheFirstInstruction) {
  const ChatTemplate t(kLlama2, "<s>", "</s>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] 2+2? [/INST]");
  EXPECT_EQ(t.render(kNoSystem, false), "<s>[INST] Hi! [/INST] Hello. </s><s>[INST] 2+2? [/INST]");
}

TEST(ChatTemplate, Llama3WithHeaders) {
  const ChatTemplate t(kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t.render(kNoSystem, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>");
}

TEST(ChatTemplate, Zephyr) {
  const ChatTemplate t(kZephyr, "<s>", "</s>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<|system|>\nBe brief.</s>\n<|user|>\nHi!</s>\n<|assistant|>\n Hello. </s>\n<|user|>\n2+2?</s>\n<|assistant|>\n");
  EXPECT_EQ(t.render(kNoSystem, false), "<|user|>\nHi!</s>\n<|assistant|>\n Hello. </s>\n<|user|>\n2+2?</s>\n");
}

TEST(ChatTemplate, MistralInstructChecksAlternation) {
  const ChatTemplate t(kMistral, "<s>", "</s>", "mistral");
  EXPECT_EQ(t.render(kNoSystem, true), "<s>[INST] Hi! [/INST] Hello. </s>[INST] 2+2? [/INST]");
  EXPECT_EQ(testing::error_of([&] { t.render(kWithSystem, true); }),
            "mistral:4:28: Conversation roles must alternate user/assistant/user/assistant/...");
  EXPECT_EQ(testing::error_of([&] { t.render({{"user", "a"}, {"user", "b"}}, true); }),
            "mistral:4:28: Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(ChatTemplate, Phi3EndsWithEosUnlessPromptingForAReply) {
  const ChatTemplate t(kPhi3, "<s>", "<|endoftext|>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\n Hello. <|end|>\n<|user|>\n2+2?<|end|>\n"
            "<|assistant|>\n");
  EXPECT_EQ(t.render(kNoSystem, false),
            "<|user|>\nHi!<|end|>\n<|assistant|>\n Hello. <|end|>\n<|user|>\n2+2?<|end|>\n<|endoftext|>");
}

TEST(ChatTemplate, GemmaCallsTheAssistantModel) {
  const ChatTemplate t(kGemma, "<bos>", "<eos>", "gemma");
  EXPECT_EQ(t.render(kNoSystem, true),
            "<bos><start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\n"
            "2+2?<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(testing::error_of([&] { t.render(kWithSystem, true); }), "gemma:3:23: System role not supported");
}

TEST(ChatTemplate, StopStringsAreTheEosAndTheTemplatesEndMarkers) {
  using V = std::vector<std::string>;
  EXPECT_EQ(ChatTemplate().stop_strings(), V{"<|im_end|>"});
  EXPECT_EQ(ChatTemplate(kLlama3, "<|begin_of_text|>", "<|end_of_text|>").stop_strings(), (V{"<|end_of_text|>", "<|eot_id|>"}));
  EXPECT_EQ(ChatTemplate(kPhi3, "<s>", "<|endoftext|>").stop_strings(), (V{"<|endoftext|>", "<|end|>"}));
  EXPECT_EQ(ChatTemplate(kGemma, "<bos>", "<eos>").stop_strings(), (V{"<eos>", "<end_of_turn>"}));
  EXPECT_EQ(ChatTemplate(kLlama2, "<s>", "</s>").stop_strings(), V{"</s>"});
}

TEST(ChatTemplate, SpecialTokenTextBecomesSingleIds) {
  const TempDir dir("special");
  const auto tok = marker_tokenizer(dir);
  const int32_t start = tok->special_id("<|im_start|>"), end = tok->special_id("<|im_end|>");
  ASSERT_GE(start, 256);
  ASSERT_GE(end, 256);
  const std::vector<int32_t> ids = ChatTemplate().encode(*tok, {{"user", "Hi"}}, true);
  const std::vector<int32_t> want{start, 'u', 's', 'e', 'r', '\n', 'H', 'i', end, '\n', start, 'a', 's', 's', 'i', 's', 't', 'a', 'n', 't', '\n'};
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok->decode(ids), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // Plain encode() keeps treating marker text as characters (untrusted text cannot inject markers).
  EXPECT_EQ(tok->encode("<|im_end|>").size(), 10u);
  // The longest marker at a position wins; text around and between markers is plain.
  EXPECT_EQ(tok->encode_with_special("a</s><s></s"), (std::vector<int32_t>{'a', tok->special_id("</s>"), tok->special_id("<s>"), '<', '/', 's'}));
  EXPECT_EQ(tok->encode_with_special(""), std::vector<int32_t>{});
  // The default special tokens are BOS and EOT: the byte tokenizer's <|endoftext|>.
  EXPECT_EQ(data::make_byte_tokenizer()->encode_with_special("a<|endoftext|>"), (std::vector<int32_t>{'a', 256}));
}

TEST(ChatTemplate, ChatMLIsTextWhenTheVocabularyLacksItsMarkers) {
  const auto tok = data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/gpt2");
  const std::vector<Message> msgs{{"system", "Be brief."}, {"user", "Hi!"}};
  const std::vector<int32_t> ids = ChatTemplate().encode(*tok, msgs, true);
  EXPECT_EQ(tok->decode(ids),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(ids, tok->encode(tok->decode(ids)));
  // GPT-2's one special token (a vocabulary entry of encoder.json) is one id when a template writes it.
  const int32_t eot = tok->special_id("<|endoftext|>");
  ASSERT_GE(eot, 0);
  const std::vector<int32_t> llama2 = ChatTemplate(kLlama2, "<|endoftext|>", "<|endoftext|>").encode(*tok, {{"user", "Q"}, {"assistant", "A"}}, false);
  EXPECT_EQ(llama2.front(), eot);
  EXPECT_EQ(llama2.back(), eot);
  EXPECT_EQ(tok->decode(llama2), "<|endoftext|>[INST] Q [/INST] A <|endoftext|>");
  // A template using a token the configuration does not define fails as Jinja would.
  EXPECT_NE(testing::error_of([&] { ChatTemplate(kLlama2, "", "</s>").render({{"user", "Q"}}, false); }).find("undefined value in '+'"),
            std::string::npos);
}

TEST(ChatTemplate, SentencePieceBosAndEosTextBecomeTheirIds) {
  const auto tok = data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/stories260K/tok512.model");
  ASSERT_GE(tok->bos_id(), 0);
  const std::vector<int32_t> ids = ChatTemplate(kLlama2, "<s>", "</s>").encode(*tok, {{"user", "Hi"}, {"assistant", "Yo"}}, false);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), tok->bos_id());
  EXPECT_EQ(ids.back(), tok->eot_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok->bos_id()), 1);
}

// The masked ids decode to exactly each assistant reply plus its end-of-turn text.
std::vector<std::string> masked_spans(const data::Tokenizer& tok, const ChatTemplate::Masked& m) {
  std::vector<std::string> spans;
  for (size_t i = 0; i < m.ids.size(); ++i) {
    if (!m.assistant_mask[i]) continue;
    if (i == 0 || !m.assistant_mask[i - 1]) spans.emplace_back();
    spans.back() += tok.decode({m.ids[i]});
  }
  return spans;
}

TEST(ChatTemplate, AssistantMaskCoversRepliesAndTheirEndMarkers) {
  const TempDir dir("mask");
  const auto tok = marker_tokenizer(dir);
  const std::vector<Message> conv{{"system", "S"}, {"user", "Hi!"}, {"assistant", "Hello."}, {"user", "More?"}, {"assistant", "Yes."}};
  struct Case {
    ChatTemplate t;
    std::vector<std::string> spans;
  };
  const std::vector<Case> cases{
      {ChatTemplate(), {"Hello.<|im_end|>\n", "Yes.<|im_end|>\n"}},
      {ChatTemplate(kQwen2, "", "<|im_end|>", "qwen2"), {"Hello.<|im_end|>\n", "Yes.<|im_end|>\n"}},
      {ChatTemplate(kLlama3, "<|begin_of_text|>", "<|eot_id|>", "llama3"), {"Hello.<|eot_id|>", "Yes.<|eot_id|>"}},
      {ChatTemplate(kZephyr, "<s>", "</s>", "zephyr"), {"Hello.</s>\n", "Yes.</s>\n"}},
      {ChatTemplate(kLlama2, "<s>", "</s>", "llama2"), {" Hello. </s>", " Yes. </s>"}},
      {ChatTemplate(kPhi3, "<s>", "<|endoftext|>", "phi3"), {"Hello.<|end|>\n", "Yes.<|end|>\n<|endoftext|>"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.t.origin());
    const ChatTemplate::Masked m = c.t.encode_with_mask(*tok, conv);
    ASSERT_EQ(m.ids.size(), m.assistant_mask.size());
    EXPECT_EQ(m.ids, c.t.encode(*tok, conv, false));  // no merges in this tokenizer: segments add up exactly
    EXPECT_EQ(masked_spans(*tok, m), c.spans);
  }
  // With a real BPE (GPT-2, markers as text) the mask still lines up with the ids and replies.
  const auto gpt2 = data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/gpt2");
  const ChatTemplate::Masked m = ChatTemplate().encode_with_mask(*gpt2, conv);
  EXPECT_EQ(gpt2->decode(m.ids), ChatTemplate().render(conv, false));
  EXPECT_EQ(masked_spans(*gpt2, m), (std::vector<std::string>{"Hello.<|im_end|>\n", "Yes.<|im_end|>\n"}));
}

TEST(ChatTemplate, AssistantMaskRefusesTemplatesThatRewriteEarlierTurns) {
  const TempDir dir("rewrite");
  const auto tok = marker_tokenizer(dir);
  // Only the last message is shown in full: a reply's text is not where its prefix rendering puts it.
  const ChatTemplate t("{% for m in messages %}{% if loop.last %}{{ m.content }}{% else %}[hidden]{% endif %}{% endfor %}",
                       "", "", "hiding");
  const std::string err = testing::error_of([&] { t.encode_with_mask(*tok, {{"user", "q"}, {"assistant", "A"}, {"user", "r"}}); });
  EXPECT_NE(err.find("hiding: cannot find where assistant message 1 lies"), std::string::npos) << err;
}

TEST(ChatTemplate, FromModelDirectory) {
  const TempDir dir("config");
  // No tokenizer_config.json: ChatML.
  EXPECT_EQ(ChatTemplate::from_model_dir(dir.str()).origin(), "built-in ChatML");
  // A template string, with bos/eos as {"content": ...} objects.
  nlohmann::json config = {{"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
                           {"eos_token", "</s>"},
                           {"chat_template", "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"}};
  dir.write("tokenizer_config.json", config.dump());
  ChatTemplate t = ChatTemplate::from_model_dir(dir.str());
  EXPECT_EQ(t.render({{"user", "x"}}, false), "<s>x</s>");
  EXPECT_EQ(t.origin(), dir.str() + "/tokenizer_config.json: chat_template");
  // A list of named templates: the "default" one.
  config["chat_template"] = {{{"name", "tool_use"}, {"template", "tools"}}, {{"name", "default"}, {"template", "plain {{ messages | length }}"}}};
  dir.write("tokenizer_config.json", config.dump());
  EXPECT_EQ(ChatTemplate::from_model_dir(dir.str()).render({{"user", "x"}}, false), "plain 1");
  config["chat_template"] = {{{"name", "tool_use"}, {"template", "tools"}}};
  dir.write("tokenizer_config.json", config.dump());
  EXPECT_NE(testing::error_of([&] { ChatTemplate::from_model_dir(dir.str()); }).find("none named \"default\""), std::string::npos);
  // No chat_template: chat_template.jinja next to it, else ChatML.
  config.erase("chat_template");
  dir.write("tokenizer_config.json", config.dump());
  EXPECT_EQ(ChatTemplate::from_model_dir(dir.str()).origin(), "built-in ChatML");
  dir.write("chat_template.jinja", "J{{ eos_token }}\n");
  EXPECT_EQ(ChatTemplate::from_model_dir(dir.str()).render({}, false), "J</s>");
  // Syntax errors name the file, line and column.
  config["chat_template"] = "ok\n{% if %}";
  dir.write("tokenizer_config.json", config.dump());
  EXPECT_EQ(testing::error_of([&] { ChatTemplate::from_model_dir(dir.str()); }),
            dir.str() + "/tokenizer_config.json: chat_template:2:7: expected an expression, got '%}'");
  // A template that renders nothing is an error naming it (it was the generator's "prompt has no tokens").
  config["chat_template"] = "{% if false %}x{% endif %}";
  dir.write("tokenizer_config.json", config.dump());
  EXPECT_EQ(testing::error_of([&] { ChatTemplate::from_model_dir(dir.str()).encode(*data::make_byte_tokenizer(), {{"user", "x"}}, true); }),
            dir.str() + "/tokenizer_config.json: chat_template: the template rendered nothing for a conversation of 1 message(s)");
  dir.write("tokenizer_config.json", "{not json");
  EXPECT_NE(testing::error_of([&] { ChatTemplate::from_model_dir(dir.str()); }).find("not a JSON object"), std::string::npos);
}

TEST(ChatTemplate, Stories260KHasNoTemplateSoChatML) {
  const std::string data = testing::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "shared data directory not found (../shared/data)";
  const std::string dir = data + "/models/stories260K-hf";
  if (!fs::exists(dir + "/tokenizer_config.json")) GTEST_SKIP() << dir << "/tokenizer_config.json not found";
  const ChatTemplate t = ChatTemplate::from_model_dir(dir);
  EXPECT_EQ(t.origin(), "built-in ChatML");
  EXPECT_EQ(t.render({{"user", "Once"}}, true), "<|im_start|>user\nOnce<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.stop_strings(), (std::vector<std::string>{"</s>", "<|im_end|>"}));
  const auto tok = data::load_tokenizer(dir);
  // SentencePiece decodes without the dummy-prefix space at the start.
  EXPECT_EQ(tok->decode(t.encode(*tok, {{"user", "Once"}}, true)), "<|im_start|>user\nOnce<|im_end|>\n<|im_start|>assistant\n");
}

}  // namespace
}  // namespace llm::generate
