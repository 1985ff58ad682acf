// CSV: RFC 4180 tables (GPQA ships as CSV) read into rows of strings. Fields may be quoted; inside quotes commas,
// line breaks (LF or CRLF) and doubled quotes ("") are data. Rows end with LF or CRLF. Like Python's csv module, a
// quote inside an unquoted field is an ordinary character. The same reader takes TSV files with '\t'.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace bamba {

struct CsvRow {
  std::vector<std::string> fields;
  size_t line = 0;  // 1-based line on which the row starts
};

// Every row of `text`, the header included. A blank line (no characters at all) is skipped. `label` names the
// file in errors, e.g. an unterminated quoted field (naming the line where it starts) or text after a closing
// quote.
std::vector<CsvRow> parse_csv(std::string_view text, char delimiter, const std::string& label);

}  // namespace bamba
