// A Jinja2 subset interpreter, enough for the chat templates Hugging Face models ship in
// tokenizer_config.json. It runs with the environment transformers uses (trim_blocks=True,
// lstrip_blocks=True, loop controls, HF's tojson) and Jinja's default Undefined: a missing variable
// is falsy, renders empty, iterates as empty and fails `is defined`; only reading its attributes or
// items and arithmetic with it are errors.
//
// Supported: {{ }}, {% %}, {# #} with -/+ whitespace control; if/elif/else, for (loop.*, unpacking,
// inline if, else, break/continue), set (incl. block set and namespace attributes), macro, call
// blocks, filter blocks, HF's generation block (rendered as its body); literals, arithmetic, ~,
// comparisons, and/or/not, in, conditional expressions, tests, filters, slicing, string and dict
// methods, and the globals range, namespace, dict, raise_exception and strftime_now.
//
// Errors are llm::Error reading "<name>:<line>:<column>: <what>" for syntax and runtime errors alike;
// for raise_exception(msg) <what> is the template's msg. Integer overflow (Python's ints are unbounded)
// is an error too. A parsed Template is immutable: rendering it from several threads is safe.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace llm::jinja {

class Value;
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A template value, with Python's reference semantics for lists, dicts and namespaces.
class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Function };
  using List = std::vector<Value>;
  // Insertion-ordered string-keyed map; small (message fields), so lookups are linear.
  struct Dict {
    std::vector<std::pair<std::string, Value>> items;
    bool is_namespace = false;  // namespace(): attributes only, no dict methods
    const Value* find(const std::string& key) const;
    void set(const std::string& key, Value v);
  };
  using Function = std::function<Value(const CallArgs&)>;

  Value() = default;  // undefined
  // Frees nested lists and dicts iteratively: a value nested ~1e5 deep (built in a template loop) freed
  // recursively overflowed the stack.
  ~Value();
  Value(const Value&) = default;
  Value(Value&&) noexcept = default;
  Value& operator=(const Value&) = default;
  Value& operator=(Value&&) noexcept = default;
  Value(std::nullptr_t) : kind_(Kind::None) {}
  Value(bool b) : kind_(Kind::Bool), int_(b) {}
  Value(int i) : kind_(Kind::Int), int_(i) {}
  Value(int64_t i) : kind_(Kind::Int), int_(i) {}
  Value(double f) : kind_(Kind::Float), float_(f) {}
  Value(const char* s) : kind_(Kind::String), str_(s) {}
  Value(std::string s) : kind_(Kind::String), str_(std::move(s)) {}
  Value(List l) : kind_(Kind::List), list_(std::make_shared<List>(std::move(l))) {
    for (const Value& x : *list_) holds_refs_ = holds_refs_ || x.is_dict() || x.kind_ == Kind::Function || x.holds_refs_;
  }
  Value(Dict d) : kind_(Kind::Dict), dict_(std::make_shared<Dict>(std::move(d))) {}
  static Value function(Function f);
  static Value tuple(List l);  // a list that prints as Python's tuple: ('a', 1)
  static Value from_json(const nlohmann::ordered_json& j);
  static Value from_json(const nlohmann::json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  // A list with a dict or a function somewhere inside (lists do not change once built), so that a
  // search for what a value refers to can skip plain data.
  bool holds_dicts_or_functions() const { return holds_refs_; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }
  double as_double() const { return kind_ == Kind::Float ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return str_; }
  List& list() const { return *list_; }
  Dict& dict() const { return *dict_; }
  const Function& fn() const { return *fn_; }

  bool truthy() const;
  // What {{ value }} prints (Python's str(): None, True, 1.0, ['a', 1]).
  std::string str() const;
  // Python's repr() (strings quoted), used inside printed lists and dicts.
  std::string repr() const;
  // json.dumps(value, ensure_ascii=False, indent=indent) as transformers' tojson filter does; indent < 0: one line.
  std::string to_json(int indent = -1) const;
  bool operator==(const Value& o) const;
  bool operator!=(const Value& o) const { return !(*this == o); }

 private:
  Kind kind_ = Kind::Undefined;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  bool tuple_ = false;
  bool holds_refs_ = false;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

namespace ast {
struct Node;
}

class Template {
 public:
  // Parses source; syntax errors throw llm::Error "<name>:<line>:<column>: ...".
  explicit Template(const std::string& source, std::string name = "template");
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  // Renders with context's keys as variables (context must be a dict).
  std::string render(const Value& context) const;

 private:
  std::string name_;
  std::string source_;  // for line/column of runtime errors
  std::unique_ptr<ast::Node> root_;
};

}  // namespace llm::jinja
