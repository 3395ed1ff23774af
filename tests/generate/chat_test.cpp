#include "engine/generate/chat.h"

#include "engine/core/error.h"

#include "tests/common/testing.h"

namespace llm::generate {
namespace {

TEST(Chat, DetectsCommonTemplates) {
  EXPECT_EQ(detect_chat_format("{% for m in messages %}<|im_start|>{{ m.role }}..."), ChatFormat::ChatML);
  EXPECT_EQ(detect_chat_format("{{ bos_token }}{% if ... %}[INST] {{ m.content }} [/INST]"), ChatFormat::Llama2);
  EXPECT_EQ(detect_chat_format("<|start_header_id|>{{ m.role }}<|end_header_id|>"), ChatFormat::Llama3);
  EXPECT_EQ(detect_chat_format("{% if m.role == 'user' %}<|user|>\n{{ m.content }}</s>"), ChatFormat::Zephyr);
  EXPECT_EQ(detect_chat_format(""), ChatFormat::ChatML);
}

TEST(Chat, ChatMLAsTextWhenTheVocabularyLacksItsMarkers) {
  const auto tok = data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/gpt2");
  const std::vector<Message> msgs{{"system", "Be brief."}, {"user", "Hi!"}};
  const std::vector<int32_t> ids = encode_chat(*tok, ChatFormat::ChatML, msgs, true);
  EXPECT_EQ(tok->decode(ids),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_THROW(encode_chat(*tok, ChatFormat::ChatML, {{"robot", "x"}}, true), Error);
}

TEST(Chat, MarkersBecomeSpecialIdsWhenTheVocabularyHasThem) {
  // GPT-2's vocabulary has <|endoftext|> as a special token: Zephyr's "</s>" is not, so it is text,
  // while a marker that is special is one id.
  const auto tok = data::load_tokenizer(std::string(LLM_SOURCE_DIR) + "/data/assets/gpt2");
  ASSERT_GE(tok->special_id("<|endoftext|>"), 0);
  const std::vector<int32_t> ids = encode_chat(*tok, ChatFormat::Llama2, {{"user", "Q"}, {"assistant", "A"}}, false);
  EXPECT_EQ(ids.back(), tok->special_id("<|endoftext|>"));  // the end of the assistant turn
  EXPECT_EQ(tok->decode(ids), "[INST] Q [/INST] A <|endoftext|>");
  EXPECT_EQ(chat_stop_strings(ChatFormat::ChatML).front(), "<|im_end|>");
}

}  // namespace
}  // namespace llm::generate
