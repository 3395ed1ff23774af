#include "engine/train/sft_data.h"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "engine/core/error.h"

namespace llm::train {

using nlohmann::json;

std::vector<Record> read_records(const std::string& path) {
  std::istringstream in(data::read_file(path));  // names the file when it is missing or a directory
  std::vector<Record> records;
  std::string line;
  // A .json file may hold one array of objects (ShareGPT dumps); anything else is one object per line.
  char first = 0;
  while (in.get(first) && std::isspace(static_cast<unsigned char>(first))) {
  }
  in.seekg(0);
  if (first == '[') {
    const json all = json::parse(in, nullptr, false);
    LLM_CHECK(!all.is_discarded(), path, ": not valid JSON");
    for (size_t i = 0; i < all.size(); ++i) {
      const std::string where = path + ": item " + std::to_string(i);
      LLM_CHECK(all[i].is_object(), where, ": expected an object");
      records.push_back({all[i], where});
    }
    return records;
  }
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    json j = json::parse(line, nullptr, false);
    LLM_CHECK(!j.is_discarded(), where, ": not valid JSON");
    LLM_CHECK(j.is_object(), where, ": expected a JSON object");
    records.push_back({std::move(j), where});
  }
  return records;
}

namespace {
std::string string_field(const json& obj, const std::string& key, const std::string& where) {
  LLM_CHECK(obj.contains(key), where, ": missing \"", key, "\"");
  const json& v = obj[key];
  if (v.is_number()) return v.dump();
  LLM_CHECK(v.is_string(), where, ": \"", key, "\": expected a string");
  return v.get<std::string>();
}

std::string role_of_sharegpt(const std::string& from, const std::string& where) {
  if (from == "human" || from == "user") return "user";
  if (from == "gpt" || from == "assistant" || from == "chatgpt" || from == "bard" || from == "bing") return "assistant";
  if (from == "system") return "system";
  throw Error(where + ": unknown speaker \"" + from + "\" (expected human, gpt or system)");
}
}  // namespace

namespace {
// The messages a record holds (system prompt first when configured), roles checked.
std::vector<generate::Message> record_messages(const Record& r, const SftFormat& format, bool with_reply) {
  const json& f = r.fields;
  std::vector<generate::Message> messages;
  if (!format.system_prompt.empty()) messages.push_back({"system", format.system_prompt});
  if (f.contains("messages") || f.contains("conversations")) {
    const bool sharegpt = !f.contains("messages");
    const char* key = sharegpt ? "conversations" : "messages";
    LLM_CHECK(f[key].is_array(), r.where, ": \"", key, "\": expected a list");
    for (size_t i = 0; i < f[key].size(); ++i) {
      const std::string where = r.where + ": " + key + "[" + std::to_string(i) + "]";
      const json& m = f[key][i];
      LLM_CHECK(m.is_object(), where, ": expected an object");
      if (sharegpt) messages.push_back({role_of_sharegpt(string_field(m, "from", where), where), string_field(m, "value", where)});
      else messages.push_back({string_field(m, "role", where), string_field(m, "content", where)});
      const std::string& role = messages.back().role;
      LLM_CHECK(role == "system" || role == "user" || role == "assistant", where, ": unknown role \"", role,
                "\" (expected system, user or assistant)");
    }
  } else if (f.contains(format.prompt_key) || f.contains(format.completion_key)) {
    messages.push_back({"user", string_field(f, format.prompt_key, r.where)});
    if (with_reply) messages.push_back({"assistant", string_field(f, format.completion_key, r.where)});
  } else {
    throw Error(r.where + ": expected \"" + format.prompt_key + "\" and \"" + format.completion_key +
                "\", \"messages\" or \"conversations\"");
  }
  return messages;
}
}  // namespace

std::vector<generate::Message> to_conversation(const Record& r, const SftFormat& format) {
  std::vector<generate::Message> messages = record_messages(r, format, true);
  const bool has_reply = std::any_of(messages.begin(), messages.end(), [](const auto& m) { return m.role == "assistant"; });
  LLM_CHECK(has_reply, r.where, ": no assistant message to train on");
  return messages;
}

std::vector<generate::Message> to_prompt(const Record& r, const SftFormat& format) {
  std::vector<generate::Message> messages = record_messages(r, format, false);
  while (!messages.empty() && messages.back().role == "assistant") messages.pop_back();
  LLM_CHECK(!messages.empty() && messages.back().role == "user", r.where, ": no user turn to reply to");
  return messages;
}

TokenizedExample tokenize_chat(const generate::ChatTemplate& chat, const data::Tokenizer& tokenizer,
                               const std::vector<generate::Message>& messages, const std::string& where) {
  try {
    generate::ChatTemplate::Masked m = chat.encode_with_mask(tokenizer, messages);
    return {std::move(m.ids), std::move(m.assistant_mask)};
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
}

TokenizedExample tokenize_plain(const data::Tokenizer& tokenizer, const std::vector<generate::Message>& messages) {
  TokenizedExample ex;
  auto append = [&](const std::vector<int32_t>& ids, uint8_t trained) {
    ex.ids.insert(ex.ids.end(), ids.begin(), ids.end());
    ex.trained.insert(ex.trained.end(), ids.size(), trained);
  };
  if (tokenizer.bos_id() >= 0) append({tokenizer.bos_id()}, 0);
  for (const generate::Message& m : messages) append(tokenizer.encode(m.content), m.role == "assistant");
  if (tokenizer.eot_id() >= 0) append({tokenizer.eot_id()}, 1);  // the model learns to stop
  return ex;
}

std::vector<TokenizedExample> tokenize_records(const std::vector<Record>& records, const SftFormat& format,
                                               const data::Tokenizer& tokenizer, const generate::ChatTemplate& chat) {
  std::vector<TokenizedExample> out;
  out.reserve(records.size());
  for (const Record& r : records) {
    const std::vector<generate::Message> messages = to_conversation(r, format);
    out.push_back(format.chat_template ? tokenize_chat(chat, tokenizer, messages, r.where) : tokenize_plain(tokenizer, messages));
  }
  return out;
}

std::string SftStats::summary() const {
  return std::to_string(examples) + " examples, " + std::to_string(truncated) + " truncated (" + std::to_string(dropped) +
         " dropped: nothing left to train on), " + std::to_string(rows) + " rows, " + std::to_string(trained_tokens) +
         " trained tokens";
}

SftDataset::SftDataset(const std::vector<TokenizedExample>& examples, const SftOptions& opt, const std::string& source)
    : opt_(opt) {
  LLM_CHECK(opt.B > 0 && opt.T > 0 && opt.world_size > 0 && opt.rank >= 0 && opt.rank < opt.world_size, source,
            ": bad batch geometry");
  stats_.examples = static_cast<int64_t>(examples.size());
  LLM_CHECK(!examples.empty(), source, ": no examples");
  // Examples enter rows in a seeded order, so packing does not group neighbours of the file.
  EpochOrder order(stats_.examples, opt.seed);

  const int64_t T = opt.T;
  Row row;
  int32_t doc = 0;
  auto close_row = [&] {
    if (row.inputs.empty()) return;
    row.inputs.resize(T, 0);
    row.targets.resize(T, -100);
    row.doc.resize(T, doc);  // padding is a document of its own
    row.positions.resize(T, 0);
    rows_.push_back(std::move(row));
    row = Row();
    doc = 0;
  };
  for (int64_t i = 0; i < stats_.examples; ++i) {
    const TokenizedExample& ex = examples[static_cast<size_t>(order.at(i))];
    int64_t pairs = static_cast<int64_t>(ex.ids.size()) - 1;
    if (pairs > T) {
      pairs = T;
      ++stats_.truncated;
    }
    int64_t trained = 0;
    for (int64_t j = 0; j < pairs; ++j) trained += ex.trained[static_cast<size_t>(j + 1)];
    if (trained == 0) {
      ++stats_.dropped;
      continue;
    }
    stats_.trained_tokens += trained;
    if (!opt.packing || static_cast<int64_t>(row.inputs.size()) + pairs > T) close_row();
    for (int64_t j = 0; j < pairs; ++j) {
      row.inputs.push_back(ex.ids[static_cast<size_t>(j)]);
      row.targets.push_back(ex.trained[static_cast<size_t>(j + 1)] ? ex.ids[static_cast<size_t>(j + 1)] : -100);
      row.doc.push_back(doc);
      row.positions.push_back(static_cast<int32_t>(j));
    }
    ++doc;
  }
  close_row();
  stats_.rows = static_cast<int64_t>(rows_.size());
  LLM_CHECK(!rows_.empty(), source, ": no example has anything left to train on after truncation to seq_len ", T, " (",
            stats_.summary(), ")");
  order_ = EpochOrder(stats_.rows, opt.seed);
}

int64_t EpochOrder::at(int64_t g) {
  const int64_t epoch = g / n_;
  if (epoch != epoch_) {
    order_.resize(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) order_[static_cast<size_t>(i)] = i;
    Generator gen(seed_ ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(epoch + 1)));
    for (int64_t i = n_; i > 1; --i) std::swap(order_[static_cast<size_t>(i - 1)], order_[gen.next_u64() % static_cast<uint64_t>(i)]);
    epoch_ = epoch;
  }
  return order_[static_cast<size_t>(g % n_)];
}

data::Batch SftDataset::next() {
  const int64_t B = opt_.B, T = opt_.T;
  std::vector<int32_t> inputs, targets, doc, positions;
  inputs.reserve(B * T);
  targets.reserve(B * T);
  const int64_t first = (batches_ * opt_.world_size + opt_.rank) * B;
  for (int64_t i = 0; i < B; ++i) {
    const Row& r = rows_[static_cast<size_t>(order_.at(first + i))];
    inputs.insert(inputs.end(), r.inputs.begin(), r.inputs.end());
    targets.insert(targets.end(), r.targets.begin(), r.targets.end());
    doc.insert(doc.end(), r.doc.begin(), r.doc.end());
    positions.insert(positions.end(), r.positions.begin(), r.positions.end());
  }
  ++batches_;
  const Shape shape{B, T};
  data::Batch b(Tensor::from_vector(inputs, shape), Tensor::from_vector(targets, shape));
  if (opt_.packing) {
    b.doc = Tensor::from_vector(doc, shape);
    b.positions = Tensor::from_vector(positions, shape);
  }
  return b;
}

}  // namespace llm::train
