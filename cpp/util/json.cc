#include "util/json.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace spark {
namespace {

// Offset of the first byte that breaks UTF-8 (RFC 3629: no overlongs, surrogates or code points
// past U+10FFFF), or n. JSON text is UTF-8 (RFC 8259), and every string read here reaches
// Python, which refuses anything else.
size_t FirstInvalidUtf8(const unsigned char* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return n;
}

}  // namespace

class JsonParser {
 public:
  JsonParser(const char* p, size_t n, size_t max_values)
      : p_(p), end_(p + n), values_left_(max_values), max_values_(max_values) {}

  Json ParseDocument() {
    const size_t bad = FirstInvalidUtf8(reinterpret_cast<const unsigned char*>(p_), end_ - p_);
    if (bad != static_cast<size_t>(end_ - p_)) Fail("not UTF-8 (byte " + std::to_string(bad) + ")");
    Json v = ParseValue(0);
    SkipSpace();
    if (p_ != end_) Fail("trailing characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) {
    throw FormatError("invalid JSON: " + what);
  }
  void SkipSpace() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool Consume(const char* lit) {
    const size_t n = strlen(lit);
    if (static_cast<size_t>(end_ - p_) >= n && memcmp(p_, lit, n) == 0) {
      p_ += n;
      return true;
    }
    return false;
  }

  Json ParseValue(int depth) {
    if (depth > Json::kMaxDepth) Fail("nesting deeper than " + std::to_string(Json::kMaxDepth) + ": the document nests deeper than " +
                                       std::to_string(Json::kMaxDepth) + " levels");
    if (values_left_ == 0) Fail("more than " + std::to_string(max_values_) + " values (a header may hold no more than " +
                                    std::to_string(max_values_) + " JSON values)");
    --values_left_;
    SkipSpace();
    if (p_ >= end_) Fail("unexpected end");
    Json v;
    const char c = *p_;
    if (c == '{') {
      v.type_ = Json::Type::kObject;
      ++p_;
      SkipSpace();
      if (p_ < end_ && *p_ == '}') {
        ++p_;
        return v;
      }
      for (;;) {
        SkipSpace();
        if (p_ >= end_ || *p_ != '"') Fail("expected a string key");
        std::string key = ParseString();
        SkipSpace();
        if (p_ >= end_ || *p_ != ':') Fail("expected ':'");
        ++p_;
        if (v.object_.count(key)) Fail("duplicate key \"" + key + "\"");
        v.object_.emplace(std::move(key), ParseValue(depth + 1));
        SkipSpace();
        if (p_ < end_ && *p_ == ',') { ++p_; continue; }
        if (p_ < end_ && *p_ == '}') { ++p_; return v; }
        Fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = Json::Type::kArray;
      ++p_;
      SkipSpace();
      if (p_ < end_ && *p_ == ']') {
        ++p_;
        return v;
      }
      for (;;) {
        v.array_.push_back(ParseValue(depth + 1));
        SkipSpace();
        if (p_ < end_ && *p_ == ',') { ++p_; continue; }
        if (p_ < end_ && *p_ == ']') { ++p_; return v; }
        Fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = Json::Type::kString;
      v.string_ = ParseString();
      return v;
    }
    if (Consume("true")) { v.type_ = Json::Type::kBool; v.bool_ = true; return v; }
    if (Consume("false")) { v.type_ = Json::Type::kBool; v.bool_ = false; return v; }
    if (Consume("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) {
      const char* start = p_;
      while (p_ < end_ && (strchr("+-.eE", *p_) || (*p_ >= '0' && *p_ <= '9'))) ++p_;
      const std::string text(start, p_);
      char* stop = nullptr;
      v.number_ = strtod(text.c_str(), &stop);
      if (stop != text.c_str() + text.size() || !std::isfinite(v.number_)) Fail("bad number '" + text + "'");
      v.type_ = Json::Type::kNumber;
      v.integer_ = text.find_first_of(".eE") == std::string::npos;
      return v;
    }
    Fail(std::string("unexpected character '") + c + "'");
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  uint32_t Hex4() {
    if (end_ - p_ < 4) Fail("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = *p_++;
      v <<= 4;
      if (h >= '0' && h <= '9') v |= h - '0';
      else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
      else Fail("bad \\u escape");
    }
    return v;
  }

  std::string ParseString() {
    ++p_;  // opening quote
    std::string out;
    for (;;) {
      // Copy the run up to the next quote or backslash in one go (tokenizer blobs are MBs).
      const char* run = p_;
      while (p_ < end_ && *p_ != '"' && *p_ != '\\') {
        if (static_cast<unsigned char>(*p_) < 0x20) Fail("control character in string");
        ++p_;
      }
      out.append(run, p_);
      if (p_ >= end_) Fail("unterminated string");
      if (*p_ == '"') { ++p_; return out; }
      ++p_;  // backslash
      if (p_ >= end_) Fail("unterminated escape");
      const char e = *p_++;
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = Hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!Consume("\\u")) Fail("lone surrogate");
            const uint32_t lo = Hex4();
            if (lo < 0xDC00 || lo >= 0xE000) Fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            Fail("lone surrogate");
          }
          AppendUtf8(cp, &out);
          break;
        }
        default: Fail("bad escape");
      }
    }
  }

  const char* p_;
  const char* end_;
  size_t values_left_;
  const size_t max_values_;
};

Json Json::Parse(const char* data, size_t size, size_t max_values) {
  return JsonParser(data, size, max_values).ParseDocument();
}

static const char* TypeName(Json::Type t) {
  switch (t) {
    case Json::Type::kNull: return "null";
    case Json::Type::kBool: return "a boolean";
    case Json::Type::kNumber: return "a number";
    case Json::Type::kString: return "a string";
    case Json::Type::kArray: return "an array";
    case Json::Type::kObject: return "an object";
  }
  return "?";
}

#define SPARK_JSON_EXPECT(cond, what, expected) \
  if (!(cond)) throw FormatError(what + ": expected " expected ", got " + TypeName(type_))

double Json::Number(const std::string& what) const {
  SPARK_JSON_EXPECT(type_ == Type::kNumber, what, "a number");
  return number_;
}
int64_t Json::Int(const std::string& what) const {
  SPARK_JSON_EXPECT(type_ == Type::kNumber, what, "an integer");
  if (!integer_ || std::fabs(number_) > 9.0e15)
    throw FormatError(what + ": expected an integer, got " + std::to_string(number_));
  return static_cast<int64_t>(number_);
}
bool Json::Bool(const std::string& what) const {
  SPARK_JSON_EXPECT(type_ == Type::kBool, what, "a boolean");
  return bool_;
}
const std::string& Json::String(const std::string& what) const {
  SPARK_JSON_EXPECT(type_ == Type::kString, what, "a string");
  return string_;
}
const std::vector<Json>& Json::Array(const std::string& what) const {
  SPARK_JSON_EXPECT(type_ == Type::kArray, what, "an array");
  return array_;
}
const std::map<std::string, Json>& Json::Object(const std::string& what) const {
  SPARK_JSON_EXPECT(type_ == Type::kObject, what, "an object");
  return object_;
}
bool Json::Has(const std::string& key) const {
  return type_ == Type::kObject && object_.count(key) > 0;
}
const Json& Json::At(const std::string& key) const {
  if (type_ != Type::kObject) throw FormatError("expected an object holding \"" + key + "\"");
  auto it = object_.find(key);
  if (it == object_.end()) throw FormatError("missing field \"" + key + "\"");
  return it->second;
}

}  // namespace spark
