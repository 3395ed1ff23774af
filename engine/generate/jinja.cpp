// The Jinja subset: a lexer applying Jinja's whitespace rules, a recursive-descent parser following
// Jinja's operator precedence, and a tree-walking renderer. Semantics follow Jinja 3 with Python
// values (str(), repr(), truthiness, slicing) as transformers renders chat templates.
#include "engine/generate/jinja.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <stdexcept>

#include "data/tokenizer.h"
#include "engine/core/error.h"

namespace llm::jinja {

namespace {

// A runtime failure; Template::render adds the template name and the position being evaluated.
struct Fail : std::runtime_error {
  explicit Fail(const std::string& what) : std::runtime_error(what) {}
};

// Bounds that make a runaway template an error instead of a hang or an out-of-memory kill: loop
// iterations and macro calls per render (nested loops over range() or a macro calling itself twice
// per level are exponential), and the memory of a string or list built by +, ~ and * (doubling one in
// a loop) and of the output.
constexpr int64_t kMaxSteps = 1000000;
constexpr double kMaxBytes = 256.0 * (1 << 20);

// The memory a value built from others holds: a string's bytes; a list's items and the bytes of its
// strings (strings are held by value, so each copy in a list costs memory).
double footprint(const Value& v) {
  if (v.is_string()) return static_cast<double>(v.as_string().size());
  if (!v.is_list()) return 0;
  double n = static_cast<double>(v.list().size() * sizeof(Value));
  for (const Value& x : v.list()) n += x.is_string() ? static_cast<double>(x.as_string().size()) : 0;
  return n;
}

// Printing, comparing and serializing recurse once per level of a value: a deeper one (built in a loop,
// or a namespace holding itself) is an error instead of a stack overflow.
constexpr int kMaxValueNesting = 1000;
thread_local int value_nesting = 0;
struct NestingGuard {
  NestingGuard() {
    if (++value_nesting <= kMaxValueNesting) return;
    --value_nesting;
    throw Fail("a value nested more than 1000 levels deep (or holding itself)");
  }
  ~NestingGuard() { --value_nesting; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;
};

void check_size(double bytes, const std::string& op) {
  if (bytes > kMaxBytes) throw Fail("'" + op + "' would make a value of more than 256 MiB");
}

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::Undefined: return "undefined";
    case Value::Kind::None: return "none";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "string";
    case Value::Kind::List: return "list";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Function: return "function";
  }
  return "?";
}

// UTF-8 code points of s as separate strings (Python indexes strings by code point).
std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    n = std::min(n, s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// Python's repr() of a float: the shortest text that reads back as the same double, always with a
// '.' or an exponent.
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[40];
  int p = 1;
  for (; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  const size_t e = s.find('e');
  if (e != std::string::npos) {
    const int exp = std::atoi(s.c_str() + e + 1);
    if (exp >= -4 && exp < 16) {  // Python writes these positionally
      std::snprintf(buf, sizeof buf, "%.*f", std::max(0, p - 1 - exp), d);
      s = buf;
    } else {  // Python: 1e-05, 1e+16 (two exponent digits at least, as printf)
      return s;
    }
  }
  if (s.find('.') == std::string::npos) s += ".0";
  return s;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

std::string py_quote(const std::string& s) {
  const char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  return out + q;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Value

const Value* Value::Dict::find(const std::string& key) const {
  for (const auto& kv : items)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

void Value::Dict::set(const std::string& key, Value v) {
  for (auto& kv : items)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  items.emplace_back(key, std::move(v));
}

Value::~Value() {
  // Moves the items of the containers this value alone owns to a work list, so that each value is
  // destroyed with its containers already emptied: one level of destructor calls at a time.
  std::vector<Value> work;
  auto release = [&work](Value& v) {
    if (v.list_ && v.list_.use_count() == 1) {
      for (Value& x : *v.list_)
        if (x.list_ || x.dict_) work.push_back(std::move(x));
      v.list_->clear();
    }
    if (v.dict_ && v.dict_.use_count() == 1) {
      for (auto& kv : v.dict_->items)
        if (kv.second.list_ || kv.second.dict_) work.push_back(std::move(kv.second));
      v.dict_->items.clear();
    }
  };
  release(*this);
  while (!work.empty()) {
    Value v = std::move(work.back());
    work.pop_back();
    release(v);
  }
}

Value Value::tuple(List l) {
  Value v(std::move(l));
  v.tuple_ = true;
  return v;
}

Value Value::function(Function f) {
  Value v;
  v.kind_ = Kind::Function;
  v.fn_ = std::make_shared<Function>(std::move(f));
  return v;
}

template <typename Json>
static Value value_from_json(const Json& j) {
  if (j.is_null()) return Value(nullptr);
  if (j.is_boolean()) return Value(j.template get<bool>());
  if (j.is_number_integer()) return Value(j.template get<int64_t>());
  if (j.is_number()) return Value(j.template get<double>());
  if (j.is_string()) return Value(j.template get<std::string>());
  if (j.is_array()) {
    Value::List l;
    for (const auto& e : j) l.push_back(value_from_json(e));
    return Value(std::move(l));
  }
  Value::Dict d;
  for (auto it = j.begin(); it != j.end(); ++it) d.items.emplace_back(it.key(), value_from_json(it.value()));
  return Value(std::move(d));
}

Value Value::from_json(const nlohmann::ordered_json& j) { return value_from_json(j); }
Value Value::from_json(const nlohmann::json& j) { return value_from_json(j); }

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool:
    case Kind::Int: return int_ != 0;
    case Kind::Float: return float_ != 0;
    case Kind::String: return !str_.empty();
    case Kind::List: return !list_->empty();
    case Kind::Dict: return !dict_->items.empty();
    case Kind::Function: return true;
  }
  return false;
}

std::string Value::str() const {
  switch (kind_) {
    case Kind::Undefined: return "";
    case Kind::String: return str_;
    default: return repr();
  }
}

std::string Value::repr() const {
  switch (kind_) {
    case Kind::Undefined: return "";
    case Kind::None: return "None";
    case Kind::Bool: return int_ ? "True" : "False";
    case Kind::Int: return std::to_string(int_);
    case Kind::Float: return float_repr(float_);
    case Kind::String: return py_quote(str_);
    case Kind::List: {
      const NestingGuard guard;
      std::string s = tuple_ ? "(" : "[";
      for (size_t i = 0; i < list_->size(); ++i) s += (i ? ", " : "") + (*list_)[i].repr();
      return s + (tuple_ ? (list_->size() == 1 ? ",)" : ")") : "]");
    }
    case Kind::Dict: {
      const NestingGuard guard;
      std::string s = "{";
      for (size_t i = 0; i < dict_->items.size(); ++i)
        s += (i ? ", " : "") + py_quote(dict_->items[i].first) + ": " + dict_->items[i].second.repr();
      return s + "}";
    }
    case Kind::Function: return "<function>";
  }
  return "";
}

static void dump_json(const Value& v, int indent, int depth, std::string& out) {
  const bool pretty = indent >= 0;
  auto newline = [&](int d) {
    out += '\n';
    out.append(static_cast<size_t>(indent * d), ' ');
  };
  switch (v.kind()) {
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.as_bool() ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.as_int()); return;
    case Value::Kind::Float: {
      const double d = v.as_double();
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : float_repr(d);
      return;
    }
    case Value::Kind::String: out += json_quote(v.as_string()); return;
    case Value::Kind::List: {
      if (v.list().empty()) {
        out += "[]";
        return;
      }
      const NestingGuard guard;
      out += '[';
      for (size_t i = 0; i < v.list().size(); ++i) {
        if (i) out += pretty ? "," : ", ";
        if (pretty) newline(depth + 1);
        dump_json(v.list()[i], indent, depth + 1, out);
      }
      if (pretty) newline(depth);
      out += ']';
      return;
    }
    case Value::Kind::Dict: {
      if (v.dict().items.empty()) {
        out += "{}";
        return;
      }
      const NestingGuard guard;
      out += '{';
      for (size_t i = 0; i < v.dict().items.size(); ++i) {
        if (i) out += pretty ? "," : ", ";
        if (pretty) newline(depth + 1);
        out += json_quote(v.dict().items[i].first) + ": ";
        dump_json(v.dict().items[i].second, indent, depth + 1, out);
      }
      if (pretty) newline(depth);
      out += '}';
      return;
    }
    default: throw Fail(std::string("tojson: a ") + kind_name(v.kind()) + " value is not JSON serializable");
  }
}

std::string Value::to_json(int indent) const {
  std::string out;
  dump_json(*this, indent, 0, out);
  return out;
}

static bool numeric(const Value& v) {
  return v.kind() == Value::Kind::Bool || v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Float;
}

bool Value::operator==(const Value& o) const {
  if (numeric(*this) && numeric(o)) {
    if (kind_ == Kind::Float || o.kind_ == Kind::Float) return as_double() == o.as_double();
    return int_ == o.int_;
  }
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return true;
    case Kind::String: return str_ == o.str_;
    case Kind::List: {
      const NestingGuard guard;
      return *list_ == *o.list_;
    }
    case Kind::Dict: {
      const NestingGuard guard;
      if (dict_->items.size() != o.dict_->items.size()) return false;
      for (const auto& [k, v] : dict_->items) {
        const Value* w = o.dict_->find(k);
        if (!w || *w != v) return false;
      }
      return true;
    }
    case Kind::Function: return fn_ == o.fn_;
    default: return false;
  }
}

// ---------------------------------------------------------------------------------------------------
// Lexer

namespace {

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };

struct Token {
  Tok type;
  std::string text;  // Text: the data; Name/Op: the spelling; String: the unescaped value
  size_t pos;        // byte offset in the source
  int64_t i = 0;
  double f = 0;
};

std::pair<int, int> line_col(const std::string& src, size_t pos) {
  int line = 1, col = 1;
  for (size_t i = 0; i < pos && i < src.size(); ++i) {
    if (src[i] == '\n') ++line, col = 1;
    else ++col;
  }
  return {line, col};
}

std::string located(const std::string& name, const std::string& src, size_t pos, const std::string& msg) {
  const auto [line, col] = line_col(src, pos);
  return name + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + msg;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  Lexer(const std::string& src, const std::string& name) : s_(src), name_(name) {
    if (!s_.empty() && s_.back() == '\n') s_.pop_back();  // Jinja's keep_trailing_newline=False
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // the previous tag ended a line (or nothing came before)
    while (pos < s_.size()) {
      size_t at = pos;
      while ((at = s_.find('{', at)) != std::string::npos &&
             !(at + 1 < s_.size() && (s_[at + 1] == '{' || s_[at + 1] == '%' || s_[at + 1] == '#')))
        ++at;
      std::string text = s_.substr(pos, at == std::string::npos ? std::string::npos : at - pos);
      if (at == std::string::npos) {
        push_text(std::move(text), pos);
        break;
      }
      const char kind = s_[at + 1];
      const char sign = at + 2 < s_.size() && (s_[at + 2] == '-' || s_[at + 2] == '+') ? s_[at + 2] : 0;
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_space(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks: blocks and comments alone on their line
        const size_t l = text.rfind('\n') + 1;  // npos + 1 == 0
        if ((l > 0 || line_starting) && l < text.size() &&
            std::all_of(text.begin() + static_cast<long>(l), text.end(), is_space))
          text.resize(l);
      }
      push_text(std::move(text), pos);
      size_t body = at + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        const size_t end = s_.find("#}", body);
        if (end == std::string::npos) fail(at, "unclosed comment (missing '#}')");
        pos = close_tag(end, end + 2, true);
      } else if (kind == '%' && raw_block(at, body, pos)) {
        // raw text already pushed
      } else {
        tokens_.push_back({kind == '{' ? Tok::VarBegin : Tok::BlockBegin, "", at});
        pos = tag_tokens(body, kind == '{' ? "}}" : "%}", at);
      }
      line_starting = pos > 0 && s_[pos - 1] == '\n';
    }
    tokens_.push_back({Tok::End, "", s_.size()});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void fail(size_t pos, const std::string& msg) const { throw Error(located(name_, s_, pos, msg)); }

  void push_text(std::string text, size_t pos) {
    if (!text.empty()) tokens_.push_back({Tok::Text, std::move(text), pos});
  }

  // The tag's closer spans [close, after); applies '-' (strip all whitespace after) or trim_blocks
  // (drop one newline after a block or comment tag unless '+'). Returns where data resumes.
  size_t close_tag(size_t close, size_t after, bool block) {
    const char sign = close > 0 ? s_[close - 1] : 0;
    if (sign == '-') {
      while (after < s_.size() && is_space(s_[after])) ++after;
    } else if (block && sign != '+' && after < s_.size() && s_[after] == '\n') {
      ++after;
    }
    return after;
  }

  // {% raw %}...{% endraw %}: the text between, verbatim.
  bool raw_block(size_t at, size_t body, size_t& pos) {
    size_t p = body;
    while (p < s_.size() && is_space(s_[p])) ++p;
    if (s_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < s_.size() && is_space(s_[p])) ++p;
    if (p < s_.size() && s_[p] == '-') ++p;
    if (s_.compare(p, 2, "%}") != 0) return false;
    size_t start = close_tag(p, p + 2, true);
    for (size_t q = start; (q = s_.find("{%", q)) != std::string::npos; q += 2) {
      size_t r = q + 2;
      const bool strip = r < s_.size() && s_[r] == '-';
      if (r < s_.size() && (s_[r] == '-' || s_[r] == '+')) ++r;
      while (r < s_.size() && is_space(s_[r])) ++r;
      if (s_.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      while (r < s_.size() && is_space(s_[r])) ++r;
      if (r < s_.size() && (s_[r] == '-' || s_[r] == '+')) ++r;
      if (s_.compare(r, 2, "%}") != 0) continue;
      std::string text = s_.substr(start, q - start);
      if (strip)
        while (!text.empty() && is_space(text.back())) text.pop_back();
      push_text(std::move(text), start);
      pos = close_tag(r, r + 2, true);
      return true;
    }
    fail(at, "unclosed raw block (missing '{% endraw %}')");
  }

  size_t tag_tokens(size_t p, const char* closer, size_t open) {
    const bool block = closer[0] == '%';
    while (true) {
      while (p < s_.size() && is_space(s_[p])) ++p;
      if (p >= s_.size()) fail(open, std::string("unclosed tag (missing '") + closer + "')");
      // The closer, possibly with a whitespace-control sign.
      size_t c = p;
      if ((s_[c] == '-' || (block && s_[c] == '+')) && s_.compare(c + 1, 2, closer) == 0) ++c;
      if (s_.compare(c, 2, closer) == 0) {
        tokens_.push_back({block ? Tok::BlockEnd : Tok::VarEnd, "", p});
        return close_tag(c, c + 2, block);
      }
      const char ch = s_[p];
      if (std::isalpha(static_cast<unsigned char>(ch)) || ch == '_') {
        size_t e = p;
        while (e < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        tokens_.push_back({Tok::Name, s_.substr(p, e - p), p});
        p = e;
      } else if (std::isdigit(static_cast<unsigned char>(ch))) {
        p = number(p);
      } else if (ch == '\'' || ch == '"') {
        p = string(p);
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                    "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};
        bool found = false;
        for (const char* op : ops) {
          if (s_.compare(p, std::strlen(op), op) == 0) {
            tokens_.push_back({Tok::Op, op, p});
            p += std::strlen(op);
            found = true;
            break;
          }
        }
        if (!found) fail(p, std::string("unexpected character '") + ch + "'");
      }
    }
  }

  size_t number(size_t p) {
    size_t e = p;
    std::string digits;
    auto take_digits = [&] {
      while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_'))
        if (s_[e++] != '_') digits += s_[e - 1];
    };
    take_digits();
    bool is_float = false;
    if (e + 1 < s_.size() && s_[e] == '.' && std::isdigit(static_cast<unsigned char>(s_[e + 1]))) {
      is_float = true;
      digits += s_[e++];
      take_digits();
    }
    if (e < s_.size() && (s_[e] == 'e' || s_[e] == 'E')) {
      size_t q = e + 1;
      if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
      if (q < s_.size() && std::isdigit(static_cast<unsigned char>(s_[q]))) {
        is_float = true;
        digits += s_.substr(e, q - e);
        e = q;
        take_digits();
      }
    }
    Token t{is_float ? Tok::Float : Tok::Int, s_.substr(p, e - p), p};
    if (is_float) t.f = std::strtod(digits.c_str(), nullptr);
    else t.i = std::strtoll(digits.c_str(), nullptr, 10);
    tokens_.push_back(t);
    return e;
  }

  size_t string(size_t p) {
    const char q = s_[p];
    std::string out;
    size_t e = p + 1;
    while (true) {
      if (e >= s_.size()) fail(p, "unterminated string literal");
      const char c = s_[e++];
      if (c == q) break;
      if (c != '\\' || e >= s_.size()) {
        out += c;
        continue;
      }
      const char x = s_[e++];
      switch (x) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '0': out += '\0'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case '\n': break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = x == 'x' ? 2 : x == 'u' ? 4 : 8;
          if (e + n > s_.size()) fail(e - 2, "truncated \\" + std::string(1, x) + " escape");
          const std::string hex = s_.substr(e, n);
          if (!std::all_of(hex.begin(), hex.end(), [](char h) { return std::isxdigit(static_cast<unsigned char>(h)); }))
            fail(e - 2, "bad \\" + std::string(1, x) + " escape");
          const auto cp = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
          e += n;
          data::append_utf8(out, cp);
          break;
        }
        default:  // Python keeps unknown escapes as written
          out += '\\';
          out += x;
      }
    }
    tokens_.push_back({Tok::String, std::move(out), p});
    return e;
  }

  std::string s_;
  const std::string& name_;
  std::vector<Token> tokens_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Syntax tree and evaluation

namespace ast {

struct Scope {
  std::map<std::string, Value> vars;
};

struct RenderState {
  size_t pos = 0;     // the construct being evaluated, for error positions
  int depth = 0;      // macro call depth, bounded so runaway recursion is an error, not a crash
  int64_t steps = 0;  // loop iterations and macro calls so far, bounded by kMaxSteps

  void step(size_t at) {
    if (++steps <= kMaxSteps) return;
    pos = at;
    throw Fail("the template ran more than 1000000 loop iterations and macro calls (an endless loop?)");
  }
};

struct Context {
  std::vector<std::shared_ptr<Scope>> scopes;  // [0]: the template's globals
  std::string* out;
  RenderState* state;

  void at(size_t pos) const { state->pos = pos; }
  Value lookup(const std::string& name) const {
    for (auto it = scopes.rbegin(); it != scopes.rend(); ++it) {
      auto v = (*it)->vars.find(name);
      if (v != (*it)->vars.end()) return v->second;
    }
    return Value();
  }
  void set(const std::string& name, Value v) { scopes.back()->vars[name] = std::move(v); }
};

struct Expr {
  size_t pos = 0;
  virtual ~Expr() = default;
  virtual Value eval(Context& ctx) const = 0;
};
using ExprPtr = std::unique_ptr<Expr>;

enum class Flow { Normal, Break, Continue };

struct Node {
  size_t pos = 0;
  virtual ~Node() = default;
  virtual Flow exec(Context& ctx) const = 0;
};
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

Flow exec_body(const Body& body, Context& ctx) {
  for (const NodePtr& n : body) {
    const Flow f = n->exec(ctx);
    if (ctx.out && static_cast<double>(ctx.out->size()) > kMaxBytes) throw Fail("the output would be longer than 256 MiB");
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

std::string capture(const Body& body, Context& ctx) {
  std::string buf;
  std::string* saved = ctx.out;
  ctx.out = &buf;
  try {
    exec_body(body, ctx);
  } catch (...) {
    ctx.out = saved;
    throw;
  }
  ctx.out = saved;
  return buf;
}

}  // namespace ast

namespace {

using ast::Context;
using ast::Expr;
using ast::ExprPtr;

// --- helpers on values ---

const Value* kwarg(const CallArgs& a, const std::string& name) {
  for (const auto& [k, v] : a.keyword)
    if (k == name) return &v;
  return nullptr;
}

// Argument i by position or by keyword name, or def.
Value arg(const CallArgs& a, size_t i, const std::string& name, Value def = Value()) {
  if (i < a.positional.size()) return a.positional[i];
  if (const Value* v = kwarg(a, name)) return *v;
  return def;
}

// Python's int(x) of a float, as an error (not undefined behaviour) outside 64 bits.
int64_t truncate(double d) {
  if (!(d > -9.2e18 && d < 9.2e18)) throw Fail("cannot convert " + float_repr(d) + " to an integer");
  return static_cast<int64_t>(d);
}

int64_t to_int(const Value& v, const std::string& what) {
  if (v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool) return v.as_int();
  if (v.kind() == Value::Kind::Float) return truncate(v.as_double());
  throw Fail(what + ": expected an integer, got " + kind_name(v.kind()));
}

const std::string& to_str_arg(const Value& v, const std::string& what) {
  if (!v.is_string()) throw Fail(what + ": expected a string, got " + kind_name(v.kind()));
  return v.as_string();
}

// The items a for loop or a filter walks: list items, dict keys, string characters.
Value::List iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.list();
    case Value::Kind::Dict: {
      Value::List keys;
      for (const auto& kv : v.dict().items) keys.emplace_back(kv.first);
      return keys;
    }
    case Value::Kind::String: {
      Value::List chars;
      for (auto& c : code_points(v.as_string())) chars.emplace_back(std::move(c));
      return chars;
    }
    default: throw Fail(std::string("a ") + kind_name(v.kind()) + " value is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(code_points(v.as_string()).size());
    case Value::Kind::List: return static_cast<int64_t>(v.list().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.dict().items.size());
    default: throw Fail(std::string("a ") + kind_name(v.kind()) + " value has no length");
  }
}

int compare(const Value& a, const Value& b) {
  if (numeric(a) && numeric(b)) {
    const double x = a.as_double(), y = b.as_double();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.as_string().compare(b.as_string()) < 0 ? -1 : a.as_string() == b.as_string() ? 0 : 1;
  if (a.is_list() && b.is_list()) {
    const NestingGuard guard;
    const auto &x = a.list(), &y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (int c = compare(x[i], y[i])) return c;
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  throw Fail(std::string("cannot order a ") + kind_name(a.kind()) + " and a " + kind_name(b.kind()));
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      return container.as_string().find(to_str_arg(item, "'in' on a string")) != std::string::npos;
    case Value::Kind::List:
      return std::find(container.list().begin(), container.list().end(), item) != container.list().end();
    case Value::Kind::Dict: return item.is_string() && container.dict().find(item.as_string()) != nullptr;
    default: throw Fail(std::string("'in' needs a string, list or dict on its right, got ") + kind_name(container.kind()));
  }
}

// Python's slice index arithmetic: the indices of seq[start:stop:step] for a sequence of n items.
std::vector<int64_t> slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step) {
  const int64_t st = step.is_undefined() || step.is_none() ? 1 : to_int(step, "slice step");
  if (st == 0) throw Fail("slice step cannot be zero");
  auto bound = [&](const Value& v, int64_t def) {
    if (v.is_undefined() || v.is_none()) return def;
    int64_t i = to_int(v, "slice index");
    if (i < 0) i += n;
    return st > 0 ? std::clamp<int64_t>(i, 0, n) : std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = bound(start, st > 0 ? 0 : n - 1), e = bound(stop, st > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(i);
  return idx;
}

Value item_of(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: throw Fail("cannot index an undefined value");
    case Value::Kind::Dict: {
      if (!key.is_string()) return Value();
      const Value* v = obj.dict().find(key.as_string());
      return v ? *v : Value();
    }
    case Value::Kind::List:
    case Value::Kind::String: {
      if (key.kind() != Value::Kind::Int) return Value();
      int64_t i = key.as_int();
      if (obj.is_list()) {
        const int64_t n = static_cast<int64_t>(obj.list().size());
        if (i < 0) i += n;
        return i >= 0 && i < n ? obj.list()[static_cast<size_t>(i)] : Value();
      }
      const auto cps = code_points(obj.as_string());
      const int64_t n = static_cast<int64_t>(cps.size());
      if (i < 0) i += n;
      return i >= 0 && i < n ? Value(cps[static_cast<size_t>(i)]) : Value();
    }
    default: return Value();
  }
}

// --- string helpers (ASCII case mapping, as good as chat templates need) ---

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string capitalize(const std::string& s) {
  std::string out = lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}
// Python's str.title(): a letter after a non-letter is upper-cased, the others lower-cased.
std::string title(std::string s) {
  bool prev_letter = false;
  for (char& c : s) {
    const bool letter = std::isalpha(static_cast<unsigned char>(c)) != 0;
    c = static_cast<char>(letter && !prev_letter ? std::toupper(static_cast<unsigned char>(c))
                                                 : std::tolower(static_cast<unsigned char>(c)));
    prev_letter = letter;
  }
  return s;
}

std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  const std::string set = chars.is_string() ? chars.as_string() : std::string(" \t\n\r\f\v");
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && set.find(s[b]) != std::string::npos) ++b;
  if (right)
    while (e > b && set.find(s[e - 1]) != std::string::npos) --e;
  return s.substr(b, e - b);
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) {  // Python inserts `to` around every character
    std::string out = to;
    for (const auto& c : code_points(s)) out += c + to;
    return out;
  }
  std::string out;
  size_t pos = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    const size_t f = s.find(from, pos);
    if (f == std::string::npos) break;
    out += s.substr(pos, f - pos) + to;
    pos = f + from.size();
  }
  return out + s.substr(pos);
}

Value::List split(const std::string& s, const Value& sep, int64_t maxsplit) {
  Value::List out;
  if (sep.is_undefined() || sep.is_none()) {  // runs of whitespace, no empty pieces
    size_t i = 0;
    while (true) {
      while (i < s.size() && is_space(s[i])) ++i;
      if (i >= s.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        out.emplace_back(strip(s.substr(i), Value(), false, true));
        break;
      }
      size_t e = i;
      while (e < s.size() && !is_space(s[e])) ++e;
      out.emplace_back(s.substr(i, e - i));
      i = e;
    }
    return out;
  }
  const std::string& d = to_str_arg(sep, "split");
  if (d.empty()) throw Fail("split: empty separator");
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    const size_t f = s.find(d, pos);
    if (f == std::string::npos) break;
    out.emplace_back(s.substr(pos, f - pos));
    pos = f + d.size();
  }
  out.emplace_back(s.substr(pos));
  return out;
}

bool affix(const std::string& s, const Value& what, bool prefix) {
  auto one = [&](const Value& a) {
    const std::string& x = to_str_arg(a, prefix ? "startswith" : "endswith");
    return x.size() <= s.size() && (prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0);
  };
  if (what.is_list()) return std::any_of(what.list().begin(), what.list().end(), one);
  return one(what);
}

// A method bound to its object, as `obj.name` gives it; undefined when obj has no such method.
Value method(const Value& obj, const std::string& name) {
  using F = Value::Function;
  auto bind = [](F f) { return Value::function(std::move(f)); };
  if (obj.is_string()) {
    const std::string s = obj.as_string();
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return bind([s, name](const CallArgs& a) {
        return Value(strip(s, arg(a, 0, "chars"), name != "rstrip", name != "lstrip"));
      });
    if (name == "upper") return bind([s](const CallArgs&) { return Value(upper(s)); });
    if (name == "lower") return bind([s](const CallArgs&) { return Value(lower(s)); });
    if (name == "title") return bind([s](const CallArgs&) { return Value(title(s)); });
    if (name == "capitalize") return bind([s](const CallArgs&) { return Value(capitalize(s)); });
    if (name == "startswith" || name == "endswith")
      return bind([s, name](const CallArgs& a) { return Value(affix(s, arg(a, 0, "prefix"), name == "startswith")); });
    if (name == "split")
      return bind([s](const CallArgs& a) { return Value(split(s, arg(a, 0, "sep"), to_int(arg(a, 1, "maxsplit", Value(-1)), "split"))); });
    if (name == "replace")
      return bind([s](const CallArgs& a) {
        return Value(replace(s, to_str_arg(arg(a, 0, "old"), "replace"), to_str_arg(arg(a, 1, "new"), "replace"),
                             to_int(arg(a, 2, "count", Value(-1)), "replace")));
      });
    if (name == "find")
      return bind([s](const CallArgs& a) {
        const size_t f = s.find(to_str_arg(arg(a, 0, "sub"), "find"));
        return Value(f == std::string::npos ? int64_t{-1} : static_cast<int64_t>(code_points(s.substr(0, f)).size()));
      });
    if (name == "count")
      return bind([s](const CallArgs& a) {
        const std::string sub = to_str_arg(arg(a, 0, "sub"), "count");
        int64_t n = 0;
        if (!sub.empty())
          for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
        return Value(n);
      });
    if (name == "join")
      return bind([s](const CallArgs& a) {
        std::string out;
        const Value::List items = iterate(arg(a, 0, "iterable"));
        for (size_t i = 0; i < items.size(); ++i) out += (i ? s : "") + to_str_arg(items[i], "join");
        return Value(out);
      });
    return Value();
  }
  if (obj.is_dict() && !obj.dict().is_namespace) {
    if (name == "items")
      return bind([obj](const CallArgs&) {
        Value::List out;
        for (const auto& [k, v] : obj.dict().items) out.push_back(Value::tuple({Value(k), v}));
        return Value(out);
      });
    if (name == "keys") return bind([obj](const CallArgs&) { return Value(iterate(obj)); });
    if (name == "values")
      return bind([obj](const CallArgs&) {
        Value::List out;
        for (const auto& kv : obj.dict().items) out.push_back(kv.second);
        return Value(out);
      });
    if (name == "get")
      return bind([obj](const CallArgs& a) {
        const Value v = item_of(obj, arg(a, 0, "key"));
        return v.is_undefined() ? arg(a, 1, "default", Value(nullptr)) : v;
      });
    return Value();
  }
  return Value();
}

// obj.name: a dict's method, else its key (Jinja's getattr order); a namespace's attribute.
Value attribute(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) throw Fail("cannot read attribute '" + name + "' of an undefined value");
  if (obj.is_dict()) {
    if (!obj.dict().is_namespace) {
      Value m = method(obj, name);
      if (!m.is_undefined()) return m;
    }
    const Value* v = obj.dict().find(name);
    return v ? *v : Value();
  }
  return method(obj, name);
}

// obj[key]: the item, else (string keys) the attribute, as Jinja's getitem.
Value subscript(const Value& obj, const Value& key) {
  Value v = item_of(obj, key);
  if (v.is_undefined() && key.is_string() && !obj.is_dict()) v = method(obj, key.as_string());
  return v;
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) throw Fail("undefined value in '" + op + "'");
  if (op == "+" && ((a.is_string() && b.is_string()) || (a.is_list() && b.is_list()))) {
    check_size(footprint(a) + footprint(b), op);
    if (a.is_string()) return Value(a.as_string() + b.as_string());
    Value::List l = a.list();
    l.insert(l.end(), b.list().begin(), b.list().end());
    return Value(l);
  }
  if (op == "*") {
    const Value* seq = a.is_string() || a.is_list() ? &a : b.is_string() || b.is_list() ? &b : nullptr;
    const Value& times = seq == &a ? b : a;
    if (seq && (times.kind() == Value::Kind::Int || times.kind() == Value::Kind::Bool)) {
      const int64_t n = std::max<int64_t>(0, times.as_int());
      check_size(footprint(*seq) * static_cast<double>(n), op);
      if (seq->is_string()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq->as_string();
        return Value(out);
      }
      Value::List out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->list().begin(), seq->list().end());
      return Value(out);
    }
  }
  if (!numeric(a) || !numeric(b))
    throw Fail(std::string("unsupported operand types for '") + op + "': " + kind_name(a.kind()) + " and " + kind_name(b.kind()));
  const bool ints = a.kind() != Value::Kind::Float && b.kind() != Value::Kind::Float;
  const double x = a.as_double(), y = b.as_double();
  if (op == "/") {
    if (y == 0) throw Fail("division by zero");
    return Value(x / y);
  }
  if (op == "//" || op == "%") {
    if (y == 0) throw Fail(op == "//" ? "integer division by zero" : "modulo by zero");
    if (ints) {
      const int64_t p = a.as_int(), q = b.as_int();
      if (q == -1 && p == INT64_MIN) throw Fail("integer overflow in '" + op + "'");
      int64_t d = p / q, m = p % q;
      if (m != 0 && ((m < 0) != (q < 0))) --d, m += q;  // Python floors
      return op == "//" ? Value(d) : Value(m);
    }
    const double d = std::floor(x / y);
    return op == "//" ? Value(d) : Value(x - d * y);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t r = 1, base = a.as_int();  // by squaring
      for (int64_t e = b.as_int(); e > 0; e >>= 1) {
        if ((e & 1) && __builtin_mul_overflow(r, base, &r)) throw Fail("integer overflow in '**'");
        if (e > 1 && __builtin_mul_overflow(base, base, &base)) throw Fail("integer overflow in '**'");
      }
      return Value(r);
    }
    return Value(std::pow(x, y));
  }
  if (ints) {  // Python's ints are unbounded; 64 bits are plenty for templates, overflow is an error
    const int64_t p = a.as_int(), q = b.as_int();
    int64_t r;
    const bool overflow = op == "+" ? __builtin_add_overflow(p, q, &r) : op == "-" ? __builtin_sub_overflow(p, q, &r)
                                                                          : __builtin_mul_overflow(p, q, &r);
    if (overflow) throw Fail("integer overflow in '" + op + "'");
    return Value(r);
  }
  return Value(op == "+" ? x + y : op == "-" ? x - y : x * y);
}

// --- tests (`x is name`) ---

bool apply_test(const std::string& name, const Value& v, const CallArgs& a) {
  const Value other = arg(a, 0, "other");
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return numeric(v);  // Python: bool is a number
  if (name == "integer") return v.kind() == Value::Kind::Int;
  if (name == "float") return v.kind() == Value::Kind::Float;
  if (name == "boolean") return v.kind() == Value::Kind::Bool;
  if (name == "true") return v.kind() == Value::Kind::Bool && v.as_bool();
  if (name == "false") return v.kind() == Value::Kind::Bool && !v.as_bool();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string();
  if (name == "callable") return v.kind() == Value::Kind::Function;
  if (name == "sameas") {
    if (v.kind() != other.kind()) return false;
    if (v.is_list()) return &v.list() == &other.list();
    if (v.is_dict()) return &v.dict() == &other.dict();
    return v == other;
  }
  if (name == "equalto" || name == "eq" || name == "==") return v == other;
  if (name == "ne" || name == "!=") return v != other;
  if (name == "lt" || name == "lessthan" || name == "<") return compare(v, other) < 0;
  if (name == "le" || name == "<=") return compare(v, other) <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return compare(v, other) > 0;
  if (name == "ge" || name == ">=") return compare(v, other) >= 0;
  if (name == "in") return contains(other, v);
  if (name == "odd" || name == "even") return (to_int(v, name) % 2 != 0) == (name == "odd");
  if (name == "divisibleby") {
    if (!numeric(v) || !numeric(other)) throw Fail("divisibleby: expected numbers");
    if (other.as_double() == 0) throw Fail("divisibleby 0");
    return std::fmod(v.as_double(), other.as_double()) == 0;
  }
  if (name == "lower") return v.is_string() && lower(v.as_string()) == v.as_string();
  if (name == "upper") return v.is_string() && upper(v.as_string()) == v.as_string();
  throw Fail("unknown test '" + name + "'");
}

// Remaining call arguments from index `from` on (for select/selectattr's test arguments).
CallArgs rest(const CallArgs& a, size_t from) {
  CallArgs r;
  for (size_t i = from; i < a.positional.size(); ++i) r.positional.push_back(a.positional[i]);
  return r;
}

// --- filters (`x | name(args)`) ---

Value apply_filter(const std::string& name, const Value& v, const CallArgs& a);

Value filter_select(const std::string& name, const Value& v, const CallArgs& a) {
  const bool by_attr = name == "selectattr" || name == "rejectattr";
  const bool keep = name == "select" || name == "selectattr";
  const std::string attr = by_attr ? to_str_arg(arg(a, 0, "attribute"), name) : "";
  const size_t t = by_attr ? 1 : 0;
  Value::List out;
  for (const Value& item : iterate(v)) {
    const Value x = by_attr ? item_of(item, Value(attr)) : item;
    const bool pass = t < a.positional.size() ? apply_test(to_str_arg(a.positional[t], name), x, rest(a, t + 1)) : x.truthy();
    if (pass == keep) out.push_back(item);
  }
  return Value(out);
}

std::string indent(const std::string& s, const Value& width, bool first, bool blank) {
  const std::string pad = width.is_string() ? width.as_string() : std::string(static_cast<size_t>(std::clamp<int64_t>(to_int(width, "indent"), 0, 1000)), ' ');
  std::string out;
  size_t start = 0;
  for (bool is_first = true; start <= s.size(); is_first = false) {
    size_t e = s.find('\n', start);
    const std::string line = s.substr(start, e == std::string::npos ? std::string::npos : e - start);
    if ((is_first ? first : true) && (blank || !strip(line, Value(), true, true).empty())) out += pad;
    out += line;
    if (e == std::string::npos) break;
    out += '\n';
    start = e + 1;
  }
  return out;
}

Value apply_filter(const std::string& name, const Value& v, const CallArgs& a) {
  auto need_string = [&]() -> std::string { return v.is_string() ? v.as_string() : v.str(); };
  if (name == "safe") return v;  // nothing is autoescaped
  if (name == "string") return Value(v.str());
  if (name == "trim") return Value(strip(need_string(), arg(a, 0, "chars"), true, true));
  if (name == "upper") return Value(upper(need_string()));
  if (name == "lower") return Value(lower(need_string()));
  if (name == "capitalize") return Value(capitalize(need_string()));
  if (name == "title") return Value(title(need_string()));
  if (name == "length" || name == "count") return Value(length(v));
  if (name == "first" || name == "last") {
    const Value::List items = iterate(v);
    if (items.empty()) return Value();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    const std::string sep = arg(a, 0, "d", Value("")).str();
    const Value attr = arg(a, 1, "attribute");
    std::string out;
    const Value::List items = iterate(v);
    for (size_t i = 0; i < items.size(); ++i)
      out += (i ? sep : "") + (attr.is_undefined() ? items[i] : item_of(items[i], attr)).str();
    return Value(out);
  }
  if (name == "default" || name == "d") {
    const bool boolean = arg(a, 1, "boolean", Value(false)).truthy();
    return (v.is_undefined() || (boolean && !v.truthy())) ? arg(a, 0, "default_value", Value("")) : v;
  }
  if (name == "tojson") {
    const Value ind = arg(a, 0, "indent");
    return Value(v.to_json(ind.is_undefined() || ind.is_none() ? -1 : static_cast<int>(to_int(ind, "tojson indent"))));
  }
  if (name == "int") {
    if (v.is_string()) {
      char* end = nullptr;
      const std::string s = strip(v.as_string(), Value(), true, true);
      const long long i = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && *end == 0) return Value(static_cast<int64_t>(i));
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && *end == 0) return Value(truncate(d));
      return arg(a, 0, "default", Value(0));
    }
    if (v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool) return Value(v.as_int());
    return v.kind() == Value::Kind::Float ? Value(truncate(v.as_double())) : arg(a, 0, "default", Value(0));
  }
  if (name == "float") {
    if (v.is_string()) {
      char* end = nullptr;
      const std::string s = strip(v.as_string(), Value(), true, true);
      const double d = std::strtod(s.c_str(), &end);
      return !s.empty() && *end == 0 ? Value(d) : arg(a, 0, "default", Value(0.0));
    }
    return numeric(v) ? Value(v.as_double()) : arg(a, 0, "default", Value(0.0));
  }
  if (name == "abs") {
    if (v.kind() == Value::Kind::Int) {
      if (v.as_int() == INT64_MIN) throw Fail("integer overflow in abs");
      return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
    }
    if (!numeric(v)) throw Fail(std::string("abs: expected a number, got ") + kind_name(v.kind()));
    return Value(std::fabs(v.as_double()));
  }
  if (name == "round") {
    if (!numeric(v)) throw Fail(std::string("round: expected a number, got ") + kind_name(v.kind()));
    const double scale = std::pow(10.0, static_cast<double>(to_int(arg(a, 0, "precision", Value(0)), "round")));
    const std::string how = arg(a, 1, "method", Value("common")).str();
    const double x = v.as_double() * scale;
    const double r = how == "floor" ? std::floor(x) : how == "ceil" ? std::ceil(x) : std::nearbyint(x);  // Python rounds half to even
    if (how != "common" && how != "floor" && how != "ceil") throw Fail("round: method must be common, floor or ceil");
    return Value(r / scale);
  }
  if (name == "replace") {
    return Value(replace(need_string(), arg(a, 0, "old").str(), arg(a, 1, "new").str(),
                         to_int(arg(a, 2, "count", Value(-1)), "replace")));
  }
  if (name == "list") return Value(iterate(v));
  if (name == "items") {
    if (v.is_undefined()) return Value(Value::List{});
    if (!v.is_dict()) throw Fail(std::string("items: expected a dict, got ") + kind_name(v.kind()));
    return method(v, "items").fn()(CallArgs{});
  }
  if (name == "reverse") {
    if (v.is_string()) {
      auto cps = code_points(v.as_string());
      std::string out;
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
      return Value(out);
    }
    Value::List items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value(items);
  }
  if (name == "sort") {
    Value::List items = iterate(v);
    const bool reverse = arg(a, 0, "reverse", Value(false)).truthy();
    const Value attr = arg(a, 2, "attribute");
    auto key = [&](const Value& x) { return attr.is_undefined() ? x : item_of(x, attr); };
    std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
      return reverse ? compare(key(y), key(x)) < 0 : compare(key(x), key(y)) < 0;
    });
    return Value(items);
  }
  if (name == "unique") {
    Value::List out;
    for (const Value& x : iterate(v))
      if (std::find(out.begin(), out.end(), x) == out.end()) out.push_back(x);
    return Value(out);
  }
  if (name == "min" || name == "max") {
    const Value::List items = iterate(v);
    if (items.empty()) return Value();
    Value best = items[0];
    for (const Value& x : items)
      if (name == "min" ? compare(x, best) < 0 : compare(x, best) > 0) best = x;
    return best;
  }
  if (name == "sum") {
    Value total = arg(a, 1, "start", Value(0));
    const Value attr = arg(a, 0, "attribute");
    for (const Value& x : iterate(v)) total = arithmetic("+", total, attr.is_undefined() ? x : item_of(x, attr));
    return total;
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") return filter_select(name, v, a);
  if (name == "map") {
    Value::List out;
    if (const Value* attr = kwarg(a, "attribute")) {
      const Value def = kwarg(a, "default") ? *kwarg(a, "default") : Value();
      for (const Value& x : iterate(v)) {
        const Value y = item_of(x, *attr);
        out.push_back(y.is_undefined() ? def : y);
      }
    } else {
      const std::string f = to_str_arg(arg(a, 0, "filter"), "map");
      const CallArgs fa = rest(a, 1);
      for (const Value& x : iterate(v)) out.push_back(apply_filter(f, x, fa));
    }
    return Value(out);
  }
  if (name == "indent") {
    return Value(indent(need_string(), arg(a, 0, "width", Value(4)), arg(a, 1, "first", Value(false)).truthy(),
                        arg(a, 2, "blank", Value(false)).truthy()));
  }
  if (name == "escape" || name == "e") {
    std::string out;
    for (char c : need_string()) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&#34;"; break;
        case '\'': out += "&#39;"; break;
        default: out += c;
      }
    }
    return Value(out);
  }
  throw Fail("unknown filter '" + name + "'");
}

// --- expressions ---

struct Literal : Expr {
  Value value;
  Value eval(Context&) const override { return value; }
};

struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  bool tuple = false;
  Value eval(Context& ctx) const override {
    Value::List l;
    for (const auto& e : items) l.push_back(e->eval(ctx));
    return tuple ? Value::tuple(std::move(l)) : Value(std::move(l));
  }
};

struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  Value eval(Context& ctx) const override {
    Value::Dict d;
    for (const auto& [k, v] : items) {
      const Value key = k->eval(ctx);
      ctx.at(k->pos);
      d.set(to_str_arg(key, "dict key"), v->eval(ctx));
    }
    return Value(d);
  }
};

struct Name : Expr {
  std::string name;
  Value eval(Context& ctx) const override { return ctx.lookup(name); }
};

struct GetAttr : Expr {
  ExprPtr obj;
  std::string name;
  Value eval(Context& ctx) const override {
    const Value o = obj->eval(ctx);
    ctx.at(pos);
    return attribute(o, name);
  }
};

struct GetItem : Expr {
  ExprPtr obj, key;
  Value eval(Context& ctx) const override {
    const Value o = obj->eval(ctx), k = key->eval(ctx);
    ctx.at(pos);
    return subscript(o, k);
  }
};

struct Slice : Expr {
  ExprPtr obj, start, stop, step;  // any may be null
  Value eval(Context& ctx) const override {
    const Value o = obj->eval(ctx);
    auto part = [&](const ExprPtr& e) { return e ? e->eval(ctx) : Value(); };
    const Value b = part(start), e = part(stop), s = part(step);
    ctx.at(pos);
    if (o.is_list()) {
      Value::List out;
      for (int64_t i : slice_indices(static_cast<int64_t>(o.list().size()), b, e, s)) out.push_back(o.list()[static_cast<size_t>(i)]);
      return Value(out);
    }
    if (o.is_string()) {
      const auto cps = code_points(o.as_string());
      std::string out;
      for (int64_t i : slice_indices(static_cast<int64_t>(cps.size()), b, e, s)) out += cps[static_cast<size_t>(i)];
      return Value(out);
    }
    if (o.is_undefined()) throw Fail("cannot slice an undefined value");
    throw Fail(std::string("cannot slice a ") + kind_name(o.kind()));
  }
};

struct Args {
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
  CallArgs eval(Context& ctx) const {
    CallArgs a;
    for (const auto& e : positional) a.positional.push_back(e->eval(ctx));
    for (const auto& [k, e] : keyword) a.keyword.emplace_back(k, e->eval(ctx));
    return a;
  }
};

struct Call : Expr {
  ExprPtr callee;
  Args args;
  Value call(Context& ctx, const Value* caller) const {
    const Value f = callee->eval(ctx);
    CallArgs a = args.eval(ctx);
    if (caller) a.keyword.emplace_back("caller", *caller);
    ctx.at(pos);
    if (f.kind() != Value::Kind::Function) {
      const auto* n = dynamic_cast<const Name*>(callee.get());
      const auto* g = dynamic_cast<const GetAttr*>(callee.get());
      const std::string what = n ? "'" + n->name + "'" : g ? "'" + g->name + "'" : "the value";
      throw Fail(what + (f.is_undefined() ? " is undefined" : std::string(" is not callable (a ") + kind_name(f.kind()) + ")"));
    }
    return f.fn()(a);
  }
  Value eval(Context& ctx) const override { return call(ctx, nullptr); }
};

struct FilterExpr : Expr {
  ExprPtr value;
  std::string name;
  Args args;
  Value eval(Context& ctx) const override {
    const Value v = value->eval(ctx);
    const CallArgs a = args.eval(ctx);
    ctx.at(pos);
    return apply_filter(name, v, a);
  }
};

struct TestExpr : Expr {
  ExprPtr value;
  std::string name;
  Args args;
  bool negated = false;
  Value eval(Context& ctx) const override {
    const Value v = value->eval(ctx);
    const CallArgs a = args.eval(ctx);
    ctx.at(pos);
    return Value(apply_test(name, v, a) != negated);
  }
};

struct Unary : Expr {
  std::string op;  // not, -, +
  ExprPtr operand;
  Value eval(Context& ctx) const override {
    const Value v = operand->eval(ctx);
    if (op == "not") return Value(!v.truthy());
    ctx.at(pos);
    if (!numeric(v)) throw Fail("bad operand type for unary " + op + ": " + kind_name(v.kind()));
    if (op == "+") return v;
    if (v.kind() == Value::Kind::Float) return Value(-v.as_double());
    if (v.as_int() == INT64_MIN) throw Fail("integer overflow in unary -");
    return Value(-v.as_int());
  }
};

struct Binary : Expr {
  std::string op;
  ExprPtr left, right;
  Value eval(Context& ctx) const override {
    if (op == "and") {
      Value l = left->eval(ctx);
      return l.truthy() ? right->eval(ctx) : l;
    }
    if (op == "or") {
      Value l = left->eval(ctx);
      return l.truthy() ? l : right->eval(ctx);
    }
    const Value l = left->eval(ctx), r = right->eval(ctx);
    ctx.at(pos);
    if (op == "~") {
      std::string a = l.str(), b = r.str();
      check_size(static_cast<double>(a.size() + b.size()), op);
      return Value(a + b);
    }
    return arithmetic(op, l, r);
  }
};

// a < b <= c ...: chained as in Python.
struct Compare : Expr {
  ExprPtr first;
  std::vector<std::pair<std::string, ExprPtr>> rest;
  Value eval(Context& ctx) const override {
    Value l = first->eval(ctx);
    for (const auto& [op, e] : rest) {
      Value r = e->eval(ctx);
      ctx.at(e->pos);
      bool ok;
      if (op == "==") ok = l == r;
      else if (op == "!=") ok = l != r;
      else if (op == "in") ok = contains(r, l);
      else if (op == "not in") ok = !contains(r, l);
      else {
        const int c = compare(l, r);
        ok = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
      }
      if (!ok) return Value(false);
      l = std::move(r);
    }
    return Value(true);
  }
};

struct CondExpr : Expr {
  ExprPtr then, cond, otherwise;  // otherwise may be null (undefined)
  Value eval(Context& ctx) const override {
    if (cond->eval(ctx).truthy()) return then->eval(ctx);
    return otherwise ? otherwise->eval(ctx) : Value();
  }
};

// --- statements ---

using ast::Body;
using ast::Flow;
using ast::Node;
using ast::NodePtr;

struct TextNode : Node {
  std::string text;
  Flow exec(Context& ctx) const override {
    *ctx.out += text;
    return Flow::Normal;
  }
};

struct OutputNode : Node {
  ExprPtr expr;
  Flow exec(Context& ctx) const override {
    *ctx.out += expr->eval(ctx).str();
    return Flow::Normal;
  }
};

struct IfNode : Node {
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body otherwise;
  Flow exec(Context& ctx) const override {
    for (const auto& [cond, body] : branches)
      if (cond->eval(ctx).truthy()) return exec_body(body, ctx);
    return exec_body(otherwise, ctx);
  }
};

// Binds `names` to value; several names unpack a list (for k, v in d.items()).
void assign(Context& ctx, const std::vector<std::string>& names, const Value& value) {
  if (names.size() == 1) {
    ctx.set(names[0], value);
    return;
  }
  if (!value.is_list() || value.list().size() != names.size())
    throw Fail("cannot unpack a " + std::string(kind_name(value.kind())) + " into " + std::to_string(names.size()) + " names");
  for (size_t i = 0; i < names.size(); ++i) ctx.set(names[i], value.list()[i]);
}

struct ForNode : Node {
  std::vector<std::string> targets;
  ExprPtr iter, filter;  // filter may be null
  Body body, otherwise;
  Flow exec(Context& ctx) const override {
    const Value seq = iter->eval(ctx);
    ctx.at(iter->pos);
    if (seq.is_none()) throw Fail("cannot iterate over none");
    const Value::List all = iterate(seq);
    ctx.scopes.push_back(std::make_shared<ast::Scope>());
    struct Pop {
      Context& c;
      ~Pop() { c.scopes.pop_back(); }
    } pop{ctx};
    Value::List items;
    if (filter) {
      for (const Value& x : all) {
        ctx.state->step(pos);
        assign(ctx, targets, x);
        if (filter->eval(ctx).truthy()) items.push_back(x);
      }
    } else {
      items = all;
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      ctx.state->step(pos);
      Value::Dict loop;
      loop.items = {{"index", Value(i + 1)},
                    {"index0", Value(i)},
                    {"revindex", Value(n - i)},
                    {"revindex0", Value(n - i - 1)},
                    {"first", Value(i == 0)},
                    {"last", Value(i == n - 1)},
                    {"length", Value(n)},
                    {"depth", Value(1)},
                    {"depth0", Value(0)},
                    {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value()},
                    {"nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value()}};
      loop.items.emplace_back("cycle", Value::function([i](const CallArgs& a) {
                                if (a.positional.empty()) throw Fail("loop.cycle needs at least one value");
                                return a.positional[static_cast<size_t>(i) % a.positional.size()];
                              }));
      loop.is_namespace = true;
      ctx.set("loop", Value(std::move(loop)));
      assign(ctx, targets, items[static_cast<size_t>(i)]);
      if (exec_body(body, ctx) == Flow::Break) break;
    }
    if (n == 0) exec_body(otherwise, ctx);
    return Flow::Normal;
  }
};

// Why `v` may not become an attribute of `target`: reference counting never frees a cycle, so a
// namespace may not come to hold itself, directly or through the lists and dicts inside `v`; and a
// function's closure can hold anything, so none is stored. "" when it may. Iterative, each container
// visited once: values can be nested deeply and share parts.
std::string cannot_hold(const Value& v, const Value::Dict& target) {
  std::vector<const Value*> todo = {&v};
  std::set<const void*> seen;
  while (!todo.empty()) {
    const Value* x = todo.back();
    todo.pop_back();
    if (x->kind() == Value::Kind::Function) return "a function";
    if (x->is_dict()) {
      if (&x->dict() == &target) return "a value holding the namespace itself";
      if (!seen.insert(&x->dict()).second) continue;
      for (const auto& kv : x->dict().items) todo.push_back(&kv.second);
    } else if (x->is_list() && x->holds_dicts_or_functions()) {
      if (!seen.insert(&x->list()).second) continue;
      for (const Value& y : x->list()) todo.push_back(&y);
    }
  }
  return "";
}

struct SetNode : Node {
  std::vector<std::string> targets;
  std::string attr;  // set ns.attr = ...: targets[0] is the namespace
  ExprPtr value;     // null: a block set, the body's output
  Body body;
  Flow exec(Context& ctx) const override {
    const Value v = value ? value->eval(ctx) : Value(ast::capture(body, ctx));
    ctx.at(pos);
    if (!attr.empty()) {
      const Value ns = ctx.lookup(targets[0]);
      if (!ns.is_dict()) throw Fail("cannot set attribute '" + attr + "' of '" + targets[0] + "' (a " + kind_name(ns.kind()) + ", not a namespace)");
      const std::string refused = cannot_hold(v, ns.dict());
      if (!refused.empty()) throw Fail("cannot set '" + targets[0] + "." + attr + "' to " + refused);
      ns.dict().set(attr, v);
    } else {
      assign(ctx, targets, v);
    }
    return Flow::Normal;
  }
};

struct ControlNode : Node {
  Flow flow;
  Flow exec(Context&) const override { return flow; }
};

struct BlockNode : Node {  // generation blocks: rendered as their body
  Body body;
  Flow exec(Context& ctx) const override { return exec_body(body, ctx); }
};

struct FilterBlockNode : Node {
  std::string name;
  Args args;
  Body body;
  Flow exec(Context& ctx) const override {
    const Value text(ast::capture(body, ctx));
    const CallArgs a = args.eval(ctx);
    ctx.at(pos);
    *ctx.out += apply_filter(name, text, a).str();
    return Flow::Normal;
  }
};

struct MacroNode : Node {
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // default may be null
  Body body;
  Flow exec(Context& ctx) const override {
    const MacroNode* self = this;
    // Weak: the macro lives in the globals it refers to, and a cycle would never be freed.
    std::weak_ptr<ast::Scope> globals = ctx.scopes.front();
    ast::RenderState* state = ctx.state;
    ctx.set(name, Value::function([self, globals, state](const CallArgs& a) {
      if (state->depth >= 100) throw Fail("macro '" + self->name + "' nested too deep (recursion?)");
      state->step(state->pos);
      Context inner{{globals.lock(), std::make_shared<ast::Scope>()}, nullptr, state};
      if (a.positional.size() > self->params.size())
        throw Fail("macro '" + self->name + "' takes " + std::to_string(self->params.size()) + " arguments, got " +
                   std::to_string(a.positional.size()));
      for (const auto& [k, v] : a.keyword) {
        const bool known = k == "caller" || std::any_of(self->params.begin(), self->params.end(), [&](const auto& p) { return p.first == k; });
        if (!known) throw Fail("macro '" + self->name + "' has no parameter '" + k + "'");
      }
      for (size_t i = 0; i < self->params.size(); ++i) {
        const auto& [pname, def] = self->params[i];
        Value v = i < a.positional.size() ? a.positional[i] : kwarg(a, pname) ? *kwarg(a, pname) : def ? def->eval(inner) : Value();
        inner.set(pname, std::move(v));
      }
      if (const Value* c = kwarg(a, "caller")) inner.set("caller", *c);
      ++state->depth;
      struct Down {
        ast::RenderState* s;
        ~Down() { --s->depth; }
      } down{state};
      return Value(ast::capture(self->body, inner));
    }));
    return Flow::Normal;
  }
};

struct CallBlockNode : Node {
  std::unique_ptr<Call> call;
  std::vector<std::string> params;  // caller's parameters
  Body body;
  Flow exec(Context& ctx) const override {
    const CallBlockNode* self = this;
    Context captured = ctx;  // the caller body sees the variables around the call block
    const Value caller = Value::function([self, captured](const CallArgs& a) mutable {
      captured.scopes.push_back(std::make_shared<ast::Scope>());
      for (size_t i = 0; i < self->params.size(); ++i) captured.set(self->params[i], arg(a, i, self->params[i]));
      std::string out = ast::capture(self->body, captured);
      captured.scopes.pop_back();
      return Value(out);
    });
    *ctx.out += call->call(ctx, &caller).str();
    return Flow::Normal;
  }
};

// ---------------------------------------------------------------------------------------------------
// Parser

class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& src, const std::string& name)
      : t_(std::move(toks)), src_(src), name_(name) {}

  Body parse_template() {
    Body body = parse_body({}, 0);
    if (peek().type != Tok::End) fail(peek().pos, "unexpected '" + peek().text + "'");
    return body;
  }

 private:
  [[noreturn]] void fail(size_t pos, const std::string& msg) const { throw Error(located(name_, src_, pos, msg)); }

  // Parsing, rendering and freeing the tree recurse once per level of nesting (blocks, brackets,
  // operator and filter chains), so a deep one overflowed the stack: the depth is bounded. A Nest
  // counts the levels one parsing function opens and gives them back when it returns.
  static constexpr int kMaxNesting = 500;
  int depth_ = 0;
  struct Nest {
    explicit Nest(Parser& parser) : p(parser) {}
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;
    ~Nest() { p.depth_ -= levels; }
    void deeper(size_t pos) {
      ++levels;
      if (++p.depth_ > kMaxNesting) p.fail(pos, "nested too deeply (more than " + std::to_string(kMaxNesting) + " levels)");
    }
    Parser& p;
    int levels = 0;
  };
  const Token& peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() {
    const Token& t = peek();
    if (i_ < t_.size() - 1) ++i_;
    return t;
  }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).type == Tok::Op && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).type == Tok::Name && peek(k).text == n; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::End: return "end of template";
      case Tok::BlockEnd: return "'%}'";
      case Tok::VarEnd: return "'}}'";
      case Tok::Text: return "text";
      case Tok::String: return "a string";
      default: return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) fail(peek().pos, std::string("expected '") + op + "', got " + describe(peek()));
  }
  std::string expect_name() {
    if (peek().type != Tok::Name) fail(peek().pos, "expected a name, got " + describe(peek()));
    return next().text;
  }
  void expect_block_end() {
    if (peek().type != Tok::BlockEnd) fail(peek().pos, "expected '%}', got " + describe(peek()));
    next();
  }

  // Statements until a block tag whose keyword is in `ends` (left unconsumed after its '{%').
  Body parse_body(const std::vector<std::string>& ends, size_t open_pos) {
    Nest nest(*this);
    nest.deeper(open_pos);
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.type == Tok::End) {
        if (!ends.empty()) fail(open_pos, "unclosed block: expected '{% " + ends.back() + " %}' before the end of the template");
        return body;
      }
      if (t.type == Tok::Text) {
        auto n = std::make_unique<TextNode>();
        n->pos = t.pos;
        n->text = next().text;
        body.push_back(std::move(n));
      } else if (t.type == Tok::VarBegin) {
        next();
        auto n = std::make_unique<OutputNode>();
        n->pos = t.pos;
        n->expr = parse_tuple();
        if (peek().type != Tok::VarEnd) fail(peek().pos, "expected '}}', got " + describe(peek()));
        next();
        body.push_back(std::move(n));
      } else if (t.type == Tok::BlockBegin) {
        const Token& kw = peek(1);
        if (kw.type == Tok::Name && std::find(ends.begin(), ends.end(), kw.text) != ends.end()) {
          next();
          return body;
        }
        next();
        body.push_back(parse_statement());
      } else {
        fail(t.pos, "unexpected " + describe(t));
      }
    }
  }

  NodePtr parse_statement() {
    const Token& kw = peek();
    if (kw.type != Tok::Name) fail(kw.pos, "expected a statement keyword, got " + describe(kw));
    const std::string k = next().text;
    const size_t pos = kw.pos;
    if (k == "if") return parse_if(pos);
    if (k == "for") return parse_for(pos);
    if (k == "set") return parse_set(pos);
    if (k == "macro") return parse_macro(pos);
    if (k == "call") return parse_call_block(pos);
    if (k == "filter") return parse_filter_block(pos);
    if (k == "break" || k == "continue") {
      if (loop_depth_ == 0) fail(pos, "'" + k + "' outside a loop");
      auto n = std::make_unique<ControlNode>();
      n->pos = pos;
      n->flow = k == "break" ? Flow::Break : Flow::Continue;
      expect_block_end();
      return n;
    }
    if (k == "generation") {
      auto n = std::make_unique<BlockNode>();
      n->pos = pos;
      expect_block_end();
      n->body = parse_body({"endgeneration"}, pos);
      end_tag();
      return n;
    }
    if (k == "elif" || k == "else" || k.rfind("end", 0) == 0) fail(pos, "unexpected '{% " + k + " %}' (no open block it could close)");
    fail(pos, "unknown or unsupported statement '" + k + "'");
  }

  void end_tag() {  // after the end keyword's name has been peeked by parse_body
    next();
    expect_block_end();
  }

  NodePtr parse_if(size_t pos) {
    auto n = std::make_unique<IfNode>();
    n->pos = pos;
    ExprPtr cond = parse_expression();
    expect_block_end();
    while (true) {
      Body body = parse_body({"elif", "else", "endif"}, pos);
      n->branches.emplace_back(std::move(cond), std::move(body));
      const std::string k = next().text;
      if (k == "elif") {
        cond = parse_expression();
        expect_block_end();
        continue;
      }
      if (k == "else") {
        expect_block_end();
        n->otherwise = parse_body({"endif"}, pos);
        end_tag();
      } else {
        expect_block_end();
      }
      return n;
    }
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names{expect_name()};
    while (accept_op(",")) names.push_back(expect_name());
    return names;
  }

  NodePtr parse_for(size_t pos) {
    auto n = std::make_unique<ForNode>();
    n->pos = pos;
    const bool paren = accept_op("(");
    n->targets = parse_targets();
    if (paren) expect_op(")");
    if (!accept_name("in")) fail(peek().pos, "expected 'in' in the for loop, got " + describe(peek()));
    n->iter = parse_tuple(false);
    if (accept_name("if")) n->filter = parse_expression();
    if (is_name("recursive")) fail(peek().pos, "recursive loops are not supported");
    expect_block_end();
    ++loop_depth_;
    n->body = parse_body({"else", "endfor"}, pos);
    --loop_depth_;
    if (next().text == "else") {
      expect_block_end();
      n->otherwise = parse_body({"endfor"}, pos);
      end_tag();
    } else {
      expect_block_end();
    }
    return n;
  }

  NodePtr parse_set(size_t pos) {
    auto n = std::make_unique<SetNode>();
    n->pos = pos;
    n->targets = parse_targets();
    if (n->targets.size() == 1 && accept_op(".")) n->attr = expect_name();
    if (accept_op("=")) {
      n->value = parse_tuple();
      expect_block_end();
      return n;
    }
    if (n->targets.size() != 1 || !n->attr.empty()) fail(peek().pos, "expected '=' in set");
    expect_block_end();
    n->body = parse_body({"endset"}, pos);
    end_tag();
    return n;
  }

  NodePtr parse_macro(size_t pos) {
    auto n = std::make_unique<MacroNode>();
    n->pos = pos;
    n->name = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      std::string p = expect_name();
      ExprPtr def = accept_op("=") ? parse_expression() : nullptr;
      n->params.emplace_back(std::move(p), std::move(def));
      if (!accept_op(",")) break;
    }
    expect_op(")");
    expect_block_end();
    const int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = parse_body({"endmacro"}, pos);
    loop_depth_ = saved;
    end_tag();
    return n;
  }

  NodePtr parse_call_block(size_t pos) {
    auto n = std::make_unique<CallBlockNode>();
    n->pos = pos;
    if (accept_op("(")) {
      while (!is_op(")")) {
        n->params.push_back(expect_name());
        if (!accept_op(",")) break;
      }
      expect_op(")");
    }
    ExprPtr e = parse_expression();
    if (!dynamic_cast<Call*>(e.get())) fail(pos, "expected a macro call after 'call'");
    n->call.reset(static_cast<Call*>(e.release()));
    expect_block_end();
    n->body = parse_body({"endcall"}, pos);
    end_tag();
    return n;
  }

  NodePtr parse_filter_block(size_t pos) {
    auto n = std::make_unique<FilterBlockNode>();
    n->pos = pos;
    n->name = expect_name();
    if (is_op("(")) n->args = parse_args();
    expect_block_end();
    n->body = parse_body({"endfilter"}, pos);
    end_tag();
    return n;
  }

  // --- expressions, lowest precedence first (as Jinja's parser) ---

  template <typename T>
  std::unique_ptr<T> make(size_t pos) {
    auto e = std::make_unique<T>();
    e->pos = pos;
    return e;
  }

  // a, b, c without brackets is a tuple (a list here).
  ExprPtr parse_tuple(bool with_condition = true) {
    const size_t pos = peek().pos;
    ExprPtr first = with_condition ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto l = make<ListExpr>(pos);
    l->tuple = true;
    l->items.push_back(std::move(first));
    while (accept_op(",")) {
      if (peek().type == Tok::BlockEnd || peek().type == Tok::VarEnd) break;
      l->items.push_back(with_condition ? parse_expression() : parse_or());
    }
    return l;
  }

  ExprPtr parse_expression() {
    Nest nest(*this);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      nest.deeper(peek().pos);
      auto c = make<CondExpr>(next().pos);
      c->then = std::move(e);
      c->cond = parse_or();
      if (accept_name("else")) c->otherwise = parse_expression();
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const std::string& op, size_t pos, ExprPtr l, ExprPtr r) {
    auto b = make<Binary>(pos);
    b->op = op;
    b->left = std::move(l);
    b->right = std::move(r);
    return b;
  }

  ExprPtr parse_or() {
    Nest nest(*this);
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const size_t pos = next().pos;
      nest.deeper(pos);
      e = binary("or", pos, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    Nest nest(*this);
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const size_t pos = next().pos;
      nest.deeper(pos);
      e = binary("and", pos, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      Nest nest(*this);
      nest.deeper(peek().pos);
      auto u = make<Unary>(next().pos);
      u->op = "not";
      u->operand = parse_not();
      return u;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const size_t pos = peek().pos;
    ExprPtr first = parse_math1();
    std::unique_ptr<Compare> c;
    while (true) {
      std::string op;
      if (peek().type == Tok::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                     peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next(), next();
        op = "not in";
      } else {
        break;
      }
      if (!c) {
        c = make<Compare>(pos);
        c->first = std::move(first);
      }
      c->rest.emplace_back(op, parse_math1());
    }
    if (c) return c;
    return first;
  }

  ExprPtr parse_math1() {
    Nest nest(*this);
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      nest.deeper(t.pos);
      e = binary(t.text, t.pos, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    Nest nest(*this);
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const size_t pos = next().pos;
      nest.deeper(pos);
      e = binary("~", pos, std::move(e), parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    Nest nest(*this);
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      nest.deeper(t.pos);
      e = binary(t.text, t.pos, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    Nest nest(*this);
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const size_t pos = next().pos;
      nest.deeper(pos);
      e = binary("**", pos, std::move(e), parse_unary(true));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    Nest nest(*this);
    nest.deeper(peek().pos);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      auto u = make<Unary>(peek().pos);
      u->op = next().text;
      u->operand = parse_unary(false);
      e = std::move(u);
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filters(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    switch (t.type) {
      case Tok::Name: {
        next();
        auto lit = [&](Value v) {
          auto l = make<Literal>(t.pos);
          l->value = std::move(v);
          return l;
        };
        if (t.text == "true" || t.text == "True") return lit(Value(true));
        if (t.text == "false" || t.text == "False") return lit(Value(false));
        if (t.text == "none" || t.text == "None") return lit(Value(nullptr));
        auto n = make<Name>(t.pos);
        n->name = t.text;
        return n;
      }
      case Tok::String: {
        auto l = make<Literal>(t.pos);
        std::string s = next().text;
        while (peek().type == Tok::String) s += next().text;  // adjacent literals join
        l->value = Value(s);
        return l;
      }
      case Tok::Int:
      case Tok::Float: {
        auto l = make<Literal>(t.pos);
        l->value = t.type == Tok::Int ? Value(t.i) : Value(t.f);
        next();
        return l;
      }
      case Tok::Op:
        if (t.text == "(") {
          next();
          if (accept_op(")")) {  // ()
            auto l = make<ListExpr>(t.pos);
            l->tuple = true;
            return l;
          }
          ExprPtr e = parse_tuple();
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          next();
          auto l = make<ListExpr>(t.pos);
          while (!is_op("]")) {
            l->items.push_back(parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("]");
          return l;
        }
        if (t.text == "{") {
          next();
          auto d = make<DictExpr>(t.pos);
          while (!is_op("}")) {
            ExprPtr k = parse_expression();
            expect_op(":");
            d->items.emplace_back(std::move(k), parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("}");
          return d;
        }
        break;
      default: break;
    }
    fail(t.pos, "expected an expression, got " + describe(t));
  }

  Args parse_args() {
    expect_op("(");
    Args a;
    while (!is_op(")")) {
      if (peek().type == Tok::Name && is_op("=", 1)) {
        std::string k = next().text;
        next();
        a.keyword.emplace_back(std::move(k), parse_expression());
      } else {
        if (!a.keyword.empty()) fail(peek().pos, "positional argument after keyword arguments");
        a.positional.push_back(parse_expression());
      }
      if (!accept_op(",")) break;
    }
    expect_op(")");
    return a;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    Nest nest(*this);
    while (true) {
      if (is_op(".") || is_op("[") || is_op("(")) nest.deeper(peek().pos);
      if (is_op(".")) {
        const size_t pos = next().pos;
        if (peek().type == Tok::Int) {  // foo.0 is foo[0]
          auto g = make<GetItem>(pos);
          g->obj = std::move(e);
          auto l = make<Literal>(peek().pos);
          l->value = Value(next().i);
          g->key = std::move(l);
          e = std::move(g);
        } else {
          auto g = make<GetAttr>(pos);
          g->obj = std::move(e);
          g->name = expect_name();
          e = std::move(g);
        }
      } else if (is_op("[")) {
        const size_t pos = next().pos;
        ExprPtr parts[3];
        bool is_slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!is_op(":") && !is_op("]")) parts[k] = parse_expression();
          if (k < 2 && accept_op(":")) {
            is_slice = true;
          } else {
            break;
          }
        }
        expect_op("]");
        if (is_slice) {
          auto s = make<Slice>(pos);
          s->obj = std::move(e);
          s->start = std::move(parts[0]);
          s->stop = std::move(parts[1]);
          s->step = std::move(parts[2]);
          e = std::move(s);
        } else {
          if (!parts[0]) fail(pos, "empty subscript");
          auto g = make<GetItem>(pos);
          g->obj = std::move(e);
          g->key = std::move(parts[0]);
          e = std::move(g);
        }
      } else if (is_op("(")) {
        auto c = make<Call>(peek().pos);
        c->callee = std::move(e);
        c->args = parse_args();
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filters(ExprPtr e) {
    Nest nest(*this);
    while (true) {
      if (is_op("|") || is_name("is") || is_op("(")) nest.deeper(peek().pos);
      if (is_op("|")) {
        const size_t pos = next().pos;
        auto f = make<FilterExpr>(pos);
        f->value = std::move(e);
        f->name = expect_name();
        if (is_op("(")) f->args = parse_args();
        e = std::move(f);
      } else if (is_name("is")) {
        const size_t pos = next().pos;
        auto t = make<TestExpr>(pos);
        t->value = std::move(e);
        t->negated = accept_name("not");
        t->name = expect_name();
        if (is_op("(")) {
          t->args = parse_args();
        } else if (starts_test_argument()) {  // `is divisibleby 3`, `is sameas none`
          t->args.positional.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        auto c = make<Call>(peek().pos);
        c->callee = std::move(e);
        c->args = parse_args();
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  bool starts_test_argument() const {
    const Token& t = peek();
    if (t.type == Tok::Name)
      return !(t.text == "else" || t.text == "or" || t.text == "and" || t.text == "if" || t.text == "in" ||
               t.text == "not" || t.text == "is");
    return t.type == Tok::String || t.type == Tok::Int || t.type == Tok::Float || is_op("[") || is_op("{");
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  const std::string& src_;
  const std::string& name_;
};

// The globals every template sees.
void add_globals(ast::Scope& g) {
  g.vars["range"] = Value::function([](const CallArgs& a) {
    if (a.positional.empty() || a.positional.size() > 3) throw Fail("range expects 1 to 3 arguments");
    int64_t start = 0, stop, step = 1;
    if (a.positional.size() == 1) {
      stop = to_int(a.positional[0], "range");
    } else {
      start = to_int(a.positional[0], "range");
      stop = to_int(a.positional[1], "range");
      if (a.positional.size() == 3) step = to_int(a.positional[2], "range");
    }
    if (step == 0) throw Fail("range step cannot be zero");
    Value::List out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (out.size() >= 1000000) throw Fail("range is too long (more than 1000000 items)");
      out.emplace_back(i);
    }
    return Value(out);
  });
  auto make_dict = [](bool ns) {
    return [ns](const CallArgs& a) {
      Value::Dict d;
      d.is_namespace = ns;
      for (const Value& p : a.positional) {
        if (!p.is_dict()) throw Fail(std::string(ns ? "namespace" : "dict") + ": positional argument must be a dict");
        for (const auto& [k, v] : p.dict().items) d.set(k, v);
      }
      for (const auto& [k, v] : a.keyword) d.set(k, v);
      return Value(d);
    };
  };
  g.vars["namespace"] = Value::function(make_dict(true));
  g.vars["dict"] = Value::function(make_dict(false));
  g.vars["raise_exception"] = Value::function([](const CallArgs& a) -> Value {
    throw Fail(arg(a, 0, "message", Value("raise_exception called")).str());
  });
  g.vars["strftime_now"] = Value::function([](const CallArgs& a) {
    const std::string fmt = to_str_arg(arg(a, 0, "format"), "strftime_now");
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[256];
    const size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
    return Value(std::string(buf, n));
  });
}

}  // namespace

namespace {
// The template's body as one node.
struct Root : ast::Node {
  ast::Body body;
  ast::Flow exec(Context& ctx) const override { return exec_body(body, ctx); }
};
}  // namespace

Template::Template(const std::string& source, std::string name) : name_(std::move(name)), source_(source) {
  auto root = std::make_unique<Root>();
  root->body = Parser(Lexer(source_, name_).run(), source_, name_).parse_template();
  root_ = std::move(root);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Value& context) const {
  LLM_CHECK(context.is_dict(), name_, ": the render context must be a dict, got ", kind_name(context.kind()));
  auto globals = std::make_shared<ast::Scope>();
  add_globals(*globals);
  for (const auto& [k, v] : context.dict().items) globals->vars[k] = v;
  std::string out;
  ast::RenderState state;
  Context ctx{{globals}, &out, &state};
  try {
    root_->exec(ctx);
  } catch (const Fail& f) {
    throw Error(located(name_, source_, state.pos, f.what()));
  }
  return out;
}

}  // namespace llm::jinja
