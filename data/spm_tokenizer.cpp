// SentencePiece models (LLaMA family) through Debian's libsentencepiece. llama-style: encode() adds
// no BOS; the model's own normalizer and dummy-prefix settings apply.
#include <sentencepiece_processor.h>

#include "data/tokenizer.h"
#include "engine/core/error.h"

namespace llm::data {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    const std::string bytes = read_file(path);
    const auto status = sp_.LoadFromSerializedProto(bytes);
    LLM_CHECK(status.ok(), path, ": not a SentencePiece model: ", status.ToString());
    identity_ = "spm:vocab=" + std::to_string(sp_.GetPieceSize()) + ":fnv1a64=" + file_fingerprint(path);
    // The special tokens: control pieces (<s>, </s>, chat markers). User-defined pieces need no help,
    // Encode() keeps them whole.
    for (int id = 0; id < sp_.GetPieceSize(); ++id)
      if (sp_.IsControl(id)) control_pieces_.push_back(sp_.IdToPiece(id));
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(std::string(text), &ids);
    LLM_CHECK(status.ok(), path_, ": encode failed: ", status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> v;
    v.reserve(ids.size());
    for (int32_t id : ids) {
      check_id(id);
      v.push_back(id);
    }
    std::string out;
    const auto status = sp_.Decode(v, &out);
    LLM_CHECK(status.ok(), path_, ": decode failed: ", status.ToString());
    return out;
  }

  // One piece as bytes: "\xe2\x96\x81" (the SentencePiece space) becomes ' ', <0xNN> a raw byte.
  // The leading space after BOS is kept; a streaming printer drops it if it wants llama2.c's output.
  std::string token_text(int32_t id) const override {
    check_id(id);
    const std::string piece = sp_.IdToPiece(id);
    if (sp_.IsByte(id) && piece.size() == 6) return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    if (sp_.IsControl(id) || sp_.IsUnknown(id)) return piece;
    std::string out;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, 3, "\xe2\x96\x81") == 0) {
        out += ' ';
        i += 3;
      } else {
        out += piece[i++];
      }
    }
    return out;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  int32_t eot_id() const override { return sp_.eos_id(); }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t special_id(std::string_view name) const override {
    const int id = sp_.PieceToId(std::string(name));
    // PieceToId answers unk for unknown pieces; only a real match of the name counts.
    return (id >= 0 && sp_.IdToPiece(id) == name) ? id : -1;
  }
  std::vector<std::string> special_tokens() const override { return control_pieces_; }
  std::string identity() const override { return identity_; }

 private:
  void check_id(int32_t id) const {
    LLM_CHECK(id >= 0 && id < sp_.GetPieceSize(), path_, ": token id ", id, " is outside the vocabulary (size ",
              sp_.GetPieceSize(), ")");
  }
  std::string path_;
  std::string identity_;
  std::vector<std::string> control_pieces_;
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace llm::data
