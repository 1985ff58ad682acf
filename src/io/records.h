// Records: every row of an evaluation or training dataset file, as the Hugging Face hub serves them, as a JSON
// object. The format follows the extension (any case):
//   .jsonl / .ndjson  one object per line; blank lines are skipped
//   .json             an array of objects, or an object holding one under "data" or "rows"
//   .csv / .tsv       RFC 4180 (io/csv.h); the header row gives the keys, every value is a string
//   .parquet          io/parquet.h
// The text formats may be gzipped (name.jsonl.gz).
// Errors name the file and the line (text formats), element, or row group and column (Parquet).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace bamba {

std::vector<nlohmann::ordered_json> read_records(const std::string& path);

}  // namespace bamba
