#include "data/document_reader.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace bamba {

namespace fs = std::filesystem;

namespace {

bool hidden(const fs::path& p) {
  std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

InputFile input_file(const fs::path& p, const std::string& format) {
  InputFile f;
  f.path = p.string();
  f.jsonl = format == "jsonl" || (format == "auto" && p.extension() == ".jsonl");
  std::error_code ec;
  f.bytes = fs::file_size(p, ec);
  if (ec) fail(f.path, ": cannot read (", ec.message(), ")");
  return f;
}

// Throws the error of utf8::check_valid, naming the file and the line, on the first ill-formed line of `text`.
void check_utf8(std::string_view text, const std::string& path, uint64_t first_line) {
  try {
    utf8::check_valid(text, "");
  } catch (const Error&) {
    // Only now find the line, so that valid text costs one pass and no string building.
    uint64_t line = first_line;
    for (size_t start = 0; start < text.size(); ++line) {
      size_t end = text.find('\n', start);
      end = end == std::string_view::npos ? text.size() : end + 1;
      utf8::check_valid(text.substr(start, end - start), cat(path, " line ", line));
      start = end;
    }
    throw;
  }
}

}  // namespace

std::vector<InputFile> list_input_files(const std::vector<std::string>& paths, const std::string& format) {
  if (format != "auto" && format != "text" && format != "jsonl")
    fail("input format \"", format, "\" is not known (expected auto, text or jsonl)");
  std::vector<InputFile> out;
  for (const std::string& given : paths) {
    fs::path p(given);
    std::error_code ec;
    fs::file_status st = fs::status(p, ec);
    if (ec || !fs::exists(st)) fail(given, ": no such file or folder");
    if (fs::is_directory(st)) {
      std::vector<fs::path> found;
      for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::follow_directory_symlink);
           it != fs::recursive_directory_iterator(); ++it) {
        if (hidden(it->path())) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) found.push_back(it->path());
      }
      std::sort(found.begin(), found.end());
      for (const fs::path& f : found) out.push_back(input_file(f, format));
    } else if (fs::is_regular_file(st)) {
      out.push_back(input_file(p, format));
    } else {
      fail(given, ": not a regular file or folder");
    }
  }
  if (out.empty()) fail("no input files found in ", paths.size(), " path(s) given");
  return out;
}

DocumentReader::DocumentReader(const InputFile& file, std::string field, TextUnit unit)
    : file_(file), field_(std::move(field)), unit_(unit) {
  fp_ = std::fopen(file_.path.c_str(), "rb");
  if (!fp_) fail(file_.path, ": cannot open (", std::strerror(errno), ")");
}

DocumentReader::~DocumentReader() {
  if (fp_) std::fclose(fp_);
  std::free(buf_);
}

void DocumentReader::fail_read() const { fail(file_.path, " line ", line_no_ + 1, ": read failed (", std::strerror(errno), ")"); }

bool DocumentReader::read_line() {
  errno = 0;
  ssize_t n = ::getline(&buf_, &cap_, fp_);
  if (n < 0) {
    if (std::ferror(fp_)) fail_read();
    return false;
  }
  ++line_no_;
  bytes_read_ += uint64_t(n);
  line_ = std::string_view(buf_, size_t(n));
  return true;
}

bool DocumentReader::next(std::string& text) {
  if (done_) return false;
  if (!file_.jsonl && unit_ == TextUnit::file) {
    text.clear();
    doc_line_ = 1;
    char chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, fp_)) > 0) text.append(chunk, n);
    if (std::ferror(fp_)) fail(file_.path, ": read failed (", std::strerror(errno), ")");
    bytes_read_ = text.size();
    check_utf8(text, file_.path, 1);
    done_ = true;
    return true;
  }
  while (read_line()) {
    doc_line_ = line_no_;
    check_utf8(line_, file_.path, line_no_);
    if (!file_.jsonl) {
      text.assign(line_);
      return true;
    }
    if (line_.find_first_not_of(" \t\r\n") == std::string_view::npos) continue;  // blank lines separate nothing
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line_);
    } catch (const nlohmann::json::exception& e) {
      fail(file_.path, " line ", line_no_, ": invalid JSON (", e.what(), ")");
    }
    if (!j.is_object()) fail(file_.path, " line ", line_no_, ": expected a JSON object, got ", j.type_name());
    if (field_.empty()) {  // the whole object (a chat conversation), as its JSON text
      text.assign(line_);
      return true;
    }
    auto it = j.find(field_);
    if (it == j.end()) fail(file_.path, " line ", line_no_, ": no field \"", field_, "\"");
    if (!it->is_string())
      fail(file_.path, " line ", line_no_, ": field \"", field_, "\" is ", it->type_name(), " (expected a string)");
    text = it->get<std::string>();
    return true;
  }
  done_ = true;
  return false;
}

}  // namespace bamba
