#include "io/csv.h"

#include "core/error.h"

namespace bamba {

std::vector<CsvRow> parse_csv(std::string_view text, char delimiter, const std::string& label) {
  std::vector<CsvRow> rows;
  size_t i = 0, line = 1;
  const size_t n = text.size();
  if (text.substr(0, 3) == "\xEF\xBB\xBF") i = 3;  // a UTF-8 byte-order mark, as Excel writes
  while (i < n) {
    if (text[i] == '\n' || (text[i] == '\r' && i + 1 < n && text[i + 1] == '\n')) {  // a blank line
      i += text[i] == '\r' ? 2 : 1;
      ++line;
      continue;
    }
    CsvRow row;
    row.line = line;
    for (;;) {  // one field per pass
      std::string field;
      if (i < n && text[i] == '"') {
        const size_t start_line = line;
        ++i;
        for (;;) {
          if (i >= n) fail(label, ": line ", start_line, ": quoted field has no closing quote");
          char c = text[i++];
          if (c == '"') {
            if (i < n && text[i] == '"') {
              field += '"';
              ++i;
              continue;
            }
            break;
          }
          if (c == '\n') ++line;
          field += c;
        }
        if (i < n && text[i] != delimiter && text[i] != '\n' && !(text[i] == '\r' && i + 1 < n && text[i + 1] == '\n'))
          fail(label, ": line ", line, ": unexpected character after a closing quote (expected '",
               delimiter == '\t' ? "\\t" : std::string(1, delimiter), "' or the end of the line)");
      } else {
        size_t start = i;
        while (i < n && text[i] != delimiter && text[i] != '\n' && !(text[i] == '\r' && i + 1 < n && text[i + 1] == '\n'))
          ++i;
        field.assign(text.substr(start, i - start));
      }
      row.fields.push_back(std::move(field));
      if (i < n && text[i] == delimiter) {
        ++i;
        continue;
      }
      if (i < n) i += text[i] == '\r' ? 2 : 1;  // the line break ending the row
      ++line;
      break;
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace bamba
