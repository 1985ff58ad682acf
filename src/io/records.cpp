#include "io/records.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/mapped_file.h"
#include "io/csv.h"
#include "io/parquet.h"
#include "tokenizer/utf8.h"

namespace bamba {

namespace {

using Json = nlohmann::ordered_json;

std::string lower_extension(const std::string& path) {
  size_t slash = path.find_last_of('/'), dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string ext = path.substr(dot + 1);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext;
}

// The whole file; a name ending in .gz is gunzipped (the hub ships some JSONL that way).
std::string read_text(const std::string& path) {
  if (path.size() < 3 || path.compare(path.size() - 3, 3, ".gz") != 0) return read_text_file(path);
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail(path, ": cannot open (", std::strerror(errno), ")");
  std::string text;
  char buf[1 << 16];
  for (;;) {
    int n = gzread(f, buf, sizeof buf);
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      fail(path, ": not a readable gzip file (", msg, ")");
    }
    if (n == 0) break;
    text.append(buf, size_t(n));
  }
  gzclose(f);
  return text;
}

std::string_view strip_bom(std::string_view s) { return s.substr(0, 3) == "\xEF\xBB\xBF" ? s.substr(3) : s; }

std::vector<Json> read_jsonl(const std::string& path) {
  std::string text = read_text(path);
  std::string_view rest = strip_bom(text);
  std::vector<Json> rows;
  for (size_t line = 1; !rest.empty(); ++line) {
    size_t nl = rest.find('\n');
    std::string_view l = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    Json j = Json::parse(l, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) fail(path, ": line ", line, ": not valid JSON");
    if (!j.is_object()) fail(path, ": line ", line, ": expected a JSON object, got ", j.type_name());
    rows.push_back(std::move(j));
  }
  return rows;
}

std::vector<Json> read_json(const std::string& path) {
  std::string text = read_text(path);
  Json doc = Json::parse(strip_bom(text), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) fail(path, ": not valid JSON");
  if (doc.is_object()) {
    for (const char* key : {"data", "rows"}) {
      auto it = doc.find(key);
      if (it != doc.end() && it->is_array()) {
        doc = std::move(*it);
        break;
      }
    }
  }
  if (!doc.is_array()) fail(path, ": expected an array of objects, or an object with one under \"data\" or \"rows\"");
  std::vector<Json> rows;
  rows.reserve(doc.size());
  for (size_t i = 0; i < doc.size(); ++i) {
    if (!doc[i].is_object()) fail(path, ": element ", i, ": expected a JSON object, got ", doc[i].type_name());
    rows.push_back(std::move(doc[i]));
  }
  return rows;
}

std::vector<Json> read_delimited(const std::string& path, char delimiter) {
  std::string text = read_text(path);
  utf8::check_valid(text, path);  // JSON values must be UTF-8 (dump() throws on anything else)
  std::vector<CsvRow> table = parse_csv(text, delimiter, path);
  std::vector<Json> rows;
  if (table.empty()) return rows;
  const std::vector<std::string>& header = table[0].fields;
  for (size_t i = 0; i < header.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (header[i] == header[j]) fail(path, ": line 1: column name '", header[i], "' appears twice in the header");
  rows.reserve(table.size() - 1);
  for (size_t r = 1; r < table.size(); ++r) {
    const CsvRow& row = table[r];
    if (row.fields.size() != header.size())
      fail(path, ": line ", row.line, ": ", row.fields.size(), " fields, the header has ", header.size());
    Json j = Json::object();
    for (size_t i = 0; i < header.size(); ++i) j[header[i]] = row.fields[i];
    rows.push_back(std::move(j));
  }
  return rows;
}

}  // namespace

std::vector<Json> read_records(const std::string& path) {
  std::string ext = lower_extension(path);
  if (ext == "gz") ext = lower_extension(path.substr(0, path.size() - 3));
  if (ext == "jsonl" || ext == "ndjson") return read_jsonl(path);
  if (ext == "json") return read_json(path);
  if (ext == "csv") return read_delimited(path, ',');
  if (ext == "tsv") return read_delimited(path, '\t');
  if (ext == "parquet" && lower_extension(path) == "parquet") return read_parquet(path);
  fail(path, ": unknown dataset format '.", ext, "' (expected .jsonl, .json, .csv, .tsv, each optionally .gz, or .parquet)");
}

}  // namespace bamba
