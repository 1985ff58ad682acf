// DocumentReader: the documents of a text or JSONL input file, streamed, for `bamba data prepare` and
// `bamba tokenizer train`. A text file is one document (data prepare) or one per line with its "\n" kept (how HF
// tokenizers trains on files); a JSONL file has one document per line, the string in a chosen field. Every error
// names the file and the line: an unreadable file, invalid UTF-8, a line that is not a JSON object, a missing or
// non-string field.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace bamba {

struct InputFile {
  std::string path;
  bool jsonl = false;
  uint64_t bytes = 0;
};

// Files and folders (searched recursively, hidden entries skipped) -> input files in a stable order: as given,
// each folder's files sorted by path. format: "auto" (.jsonl is JSONL, anything else text), "text" or "jsonl".
std::vector<InputFile> list_input_files(const std::vector<std::string>& paths, const std::string& format);

class DocumentReader {
 public:
  enum class TextUnit { file, line };
  // field "": a JSONL document is the line's whole JSON object, as text (chat conversations).
  DocumentReader(const InputFile& file, std::string field, TextUnit unit);  // Error if it cannot be opened
  ~DocumentReader();
  DocumentReader(const DocumentReader&) = delete;
  DocumentReader& operator=(const DocumentReader&) = delete;

  // The next document (possibly empty) into `text`; false at the end of the file.
  bool next(std::string& text);
  uint64_t line() const { return doc_line_; }  // 1-based line where the last document starts
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  bool read_line();  // the next line with its "\n" into line_; false at the end
  [[noreturn]] void fail_read() const;

  InputFile file_;
  std::string field_;
  TextUnit unit_;
  std::FILE* fp_ = nullptr;
  char* buf_ = nullptr;  // getline()'s buffer
  size_t cap_ = 0;
  std::string_view line_;
  uint64_t line_no_ = 0, doc_line_ = 0, bytes_read_ = 0;
  bool done_ = false;
};

}  // namespace bamba
