// Dataset files as the hub serves them. The Parquet files under tests/data/records were written by independent
// writers (DuckDB, parquetjs, hyparquet-writer: make_files.mjs there) from the rows in the .jsonl beside them,
// so each test compares bamba's reading with the writer's input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "io/csv.h"
#include "io/parquet.h"
#include "io/parquet_encoding.h"
#include "io/records.h"

namespace {

using Json = nlohmann::ordered_json;
namespace fs = std::filesystem;

const std::string kData = std::string(BAMBA_SOURCE_DIR) + "/tests/data/records/";

// The writer's input, parsed here line by line with nlohmann (not through read_records).
std::vector<Json> expected_rows(const std::string& jsonl) {
  std::ifstream in(kData + jsonl);
  EXPECT_TRUE(in) << jsonl;
  std::vector<Json> rows;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(Json::parse(line));
  return rows;
}

void expect_same_rows(const std::vector<Json>& got, const std::vector<Json>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i], want[i]) << what << " row " << i << "\n got:  " << got[i].dump() << "\n want: " << want[i].dump();
    // Same keys in the same (schema) order, not just the same set.
    std::vector<std::string> gk, wk;
    for (auto& [k, v] : got[i].items()) gk.push_back(k);
    for (auto& [k, v] : want[i].items()) wk.push_back(k);
    EXPECT_EQ(gk, wk) << what << " row " << i;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const bamba::Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string temp_file(const std::string& name, const std::string& content) {
  fs::path dir = fs::temp_directory_path() / ("bamba_records_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string path = (dir / name).string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// ---- Parquet against the writers' input ---------------------------------------------------------------------

TEST(Parquet, MmluEveryCodec) {  // question, subject, choices list<string> (3-level LIST), answer int64
  const std::vector<Json> want = expected_rows("mmlu.jsonl");
  for (const char* codec : {"uncompressed", "snappy", "gzip", "zstd", "lz4_raw"}) {
    std::string file = kData + "mmlu_" + codec + ".parquet";
    expect_same_rows(bamba::read_parquet(file), want, file);
  }
}

TEST(Parquet, MmluValuesByHand) {
  std::vector<Json> rows = bamba::read_records(kData + "mmlu_snappy.parquet");
  ASSERT_EQ(rows.size(), 7u);
  EXPECT_EQ(rows[0]["question"], "What is 2 + 2?");
  EXPECT_EQ(rows[0]["choices"], Json::parse(R"(["3", "4", "5", "22"])"));
  EXPECT_EQ(rows[0]["answer"].get<int64_t>(), 1);
  EXPECT_EQ(rows[3]["choices"][3], "\xF0\x9F\x98\x80");  // 😀
  EXPECT_EQ(rows[5]["answer"].get<int64_t>(), INT64_MAX);
  EXPECT_EQ(rows[6]["answer"].get<int64_t>(), -3);
}

TEST(Parquet, ArcStructOfLists) {  // choices struct{text list<string>, label list<string>}, an empty choice list
  std::vector<Json> rows = bamba::read_parquet(kData + "arc.parquet");
  expect_same_rows(rows, expected_rows("arc.jsonl"), "arc.parquet");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[1]["choices"]["label"], Json::parse(R"(["1", "2", "3"])"));
  EXPECT_EQ(rows[2]["choices"]["text"], Json::array());
}

TEST(Parquet, NullsInListsStructsMapsAndIntegerWidths) {
  // Nulls inside lists, null lists, empty lists, null structs and struct fields, lists of lists and of structs,
  // a map, (u)int8..64 up to 2^64-1, booleans, float, double.
  expect_same_rows(bamba::read_parquet(kData + "nested.parquet"), expected_rows("nested.jsonl"), "nested.parquet");
}

TEST(Parquet, DataPageV2WithDeltaAndByteStreamSplit) {
  // DuckDB's V2: data page v2, DELTA_BINARY_PACKED ints, DELTA_LENGTH_BYTE_ARRAY strings, BYTE_STREAM_SPLIT floats.
  expect_same_rows(bamba::read_parquet(kData + "nested_v2.parquet"), expected_rows("nested.jsonl"),
                   "nested_v2.parquet");
}

TEST(Parquet, DictionaryEncodedStrings) {
  expect_same_rows(bamba::read_parquet(kData + "dict.parquet"), expected_rows("dict.jsonl"), "dict.parquet");
  expect_same_rows(bamba::read_parquet(kData + "dict_v2.parquet"), expected_rows("dict.jsonl"), "dict_v2.parquet");
}

TEST(Parquet, LegacyListsManyPagesAndRowGroups) {
  // parquetjs: bare repeated fields, 2-level lists (repeated primitive, multi-field group, <name>_tuple), pages of
  // 4 rows, row groups of 6, v1 and v2 pages.
  expect_same_rows(bamba::read_parquet(kData + "legacy.parquet"), expected_rows("legacy.jsonl"), "legacy.parquet");
  expect_same_rows(bamba::read_parquet(kData + "legacy_v2.parquet"), expected_rows("legacy.jsonl"),
                   "legacy_v2.parquet");
}

TEST(Parquet, HyparquetV2PagesDeltaByteArrayRowGroups) {
  expect_same_rows(bamba::read_parquet(kData + "flat.parquet"), expected_rows("flat.jsonl"), "flat.parquet");
}

TEST(Parquet, DecimalsAndBinary) {
  // DECIMAL(4,2) in INT32, DECIMAL(18,3) in INT64, DECIMAL(38,10) in 16 big-endian bytes; a BLOB.
  std::vector<Json> rows = bamba::read_parquet(kData + "decimal.parquet");
  std::vector<Json> want = expected_rows("decimal.jsonl");
  ASSERT_EQ(rows.size(), want.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    for (const char* k : {"d2", "d3", "d10"}) EXPECT_EQ(rows[i][k], want[i][k]) << "row " << i << " " << k;
  }
  EXPECT_EQ(rows[0]["raw"], Json::binary({'a', 'b'}));
  EXPECT_EQ(rows[1]["raw"], Json::binary({}));
  EXPECT_TRUE(rows[2]["raw"].is_null());
}

TEST(Parquet, UnsupportedCodecNamesColumnAndRowGroup) {
  std::string err = error_of([] { bamba::read_parquet(kData + "mmlu_brotli.parquet"); });
  EXPECT_NE(err.find("mmlu_brotli.parquet"), std::string::npos) << err;
  EXPECT_NE(err.find("column 'question'"), std::string::npos) << err;
  EXPECT_NE(err.find("row group 0"), std::string::npos) << err;
  EXPECT_NE(err.find("BROTLI"), std::string::npos) << err;
}

TEST(Parquet, BadFilesAreErrors) {
  const std::string good = file_bytes(kData + "mmlu_uncompressed.parquet");
  auto parse = [](const std::string& b) {
    return error_of([&] { bamba::parse_parquet(reinterpret_cast<const unsigned char*>(b.data()), b.size(), "x.parquet"); });
  };
  EXPECT_NE(parse("").find("not a Parquet file"), std::string::npos);
  EXPECT_NE(parse("PAR1....PAR1").find("footer length"), std::string::npos);
  std::string bad_magic = good;
  bad_magic[0] = 'Q';
  EXPECT_NE(parse(bad_magic).find("not a Parquet file"), std::string::npos);
  std::string truncated = good.substr(0, good.size() - 20) + good.substr(good.size() - 4);
  EXPECT_NE(parse(truncated).find("x.parquet"), std::string::npos);
  // The footer's length says more than the file holds.
  std::string long_footer = good;
  long_footer[long_footer.size() - 5] = '\x7f';
  EXPECT_NE(parse(long_footer).find("footer length"), std::string::npos);
}

// Every single-byte corruption of a small file either reads or is an Error: never a crash or another exception
// (ASan and UBSan builds check the reads).
TEST(Parquet, EveryByteFlipIsReadOrError) {
  for (const char* name : {"mmlu_snappy.parquet", "nested_v2.parquet", "dict.parquet"}) {
    const std::string good = file_bytes(kData + name);
    size_t errors = 0;
    for (size_t i = 0; i < good.size(); ++i) {
      for (unsigned char x : {0x01, 0x80, 0xFF}) {
        std::string b = good;
        b[i] = char(b[i] ^ x);
        try {
          bamba::parse_parquet(reinterpret_cast<const unsigned char*>(b.data()), b.size(), name);
        } catch (const bamba::Error&) {
          ++errors;
        }
      }
    }
    EXPECT_GT(errors, good.size() / 4) << name;  // corruption is mostly noticed
  }
}

// ---- the integer encodings, against the examples of Parquet's Encodings.md (worked by hand) --------------------

TEST(ParquetEncoding, DeltaBinaryPackedSpecExamples) {
  // 1, 2, 3, 4, 5: block 128, 4 miniblocks, 5 values, first 1, min delta 1, every width 0.
  const unsigned char ex1[] = {0x80, 0x01, 0x04, 0x05, 0x02, 0x02, 0, 0, 0, 0};
  int64_t v1[5];
  EXPECT_EQ(bamba::parquet::decode_delta_binary_packed(ex1, sizeof ex1, v1, 5, "ex1"), sizeof ex1);
  EXPECT_EQ(std::vector<int64_t>(v1, v1 + 5), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  // 7, 5, 3, 1, 2, 3, 4, 5: deltas -2 -2 -2 1 1 1 1, min -2, so 0 0 0 3 3 3 3 in 2 bits (one padded miniblock).
  const unsigned char ex2[] = {0x80, 0x01, 0x04, 0x08, 0x0E, 0x03, 2, 0, 0, 0, 0xC0, 0x3F, 0, 0, 0, 0, 0, 0};
  int64_t v2[8];
  EXPECT_EQ(bamba::parquet::decode_delta_binary_packed(ex2, sizeof ex2, v2, 8, "ex2"), sizeof ex2);
  EXPECT_EQ(std::vector<int64_t>(v2, v2 + 8), (std::vector<int64_t>{7, 5, 3, 1, 2, 3, 4, 5}));
  EXPECT_NE(error_of([&] { bamba::parquet::decode_delta_binary_packed(ex2, 11, v2, 8, "ex2"); }).find("ex2"),
            std::string::npos);
}

TEST(ParquetEncoding, RleBitPackedHybrid) {
  // Bit width 3: an RLE run (header 5<<1: five 4s), then one bit-packed group (header 1<<1|1) of 0..7, which is
  // Encodings.md's example bytes 10001000 11000110 11111010.
  const unsigned char data[] = {0x0A, 0x04, 0x03, 0x88, 0xC6, 0xFA};
  uint16_t out[13];
  EXPECT_EQ(bamba::parquet::decode_rle_hybrid(data, sizeof data, 3, 13, out, "levels"), sizeof data);
  EXPECT_EQ(std::vector<uint16_t>(out, out + 13), (std::vector<uint16_t>{4, 4, 4, 4, 4, 0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_NE(error_of([&] { bamba::parquet::decode_rle_hybrid(data, 4, 3, 13, out, "levels"); }).find("levels"),
            std::string::npos);
}

// ---- CSV, JSONL, JSON -------------------------------------------------------------------------------------

TEST(Csv, Rfc4180) {
  std::string text =
      "Question,Correct Answer,Incorrect Answer 1\r\n"
      "\"What is 1,2?\",\"He said \"\"hi\"\"\",plain\r\n"
      "\"multi\r\nline\",,\"\"\n"
      "last,row,no newline";
  std::vector<bamba::CsvRow> rows = bamba::parse_csv(text, ',', "t.csv");
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[1].fields, (std::vector<std::string>{"What is 1,2?", "He said \"hi\"", "plain"}));
  EXPECT_EQ(rows[2].fields, (std::vector<std::string>{"multi\r\nline", "", ""}));
  EXPECT_EQ(rows[2].line, 3u);
  EXPECT_EQ(rows[3].line, 5u);
  EXPECT_EQ(rows[3].fields, (std::vector<std::string>{"last", "row", "no newline"}));
  std::string err = error_of([] { bamba::parse_csv("a,b\n1,\"open\n2,3\n", ',', "t.csv"); });
  EXPECT_NE(err.find("t.csv: line 2: quoted field has no closing quote"), std::string::npos) << err;
  err = error_of([] { bamba::parse_csv("a,b\n\"x\"y,1\n", ',', "t.csv"); });
  EXPECT_NE(err.find("t.csv: line 2"), std::string::npos) << err;
}

TEST(Records, GpqaCsvAndTsv) {
  std::string path = temp_file("gpqa_main.csv",
                               "Question,Correct Answer,Incorrect Answer 1\n"
                               "\"Two, with comma\",\"4\",\"3\"\n"
                               "Plain,yes,no\n");
  std::vector<Json> rows = bamba::read_records(path);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], Json::parse(R"({"Question": "Two, with comma", "Correct Answer": "4", "Incorrect Answer 1": "3"})"));
  EXPECT_EQ(rows[1]["Incorrect Answer 1"], "no");
  std::string bad = temp_file("bad.csv", "a,b\n1,2\n1,2,3\n");
  EXPECT_NE(error_of([&] { bamba::read_records(bad); }).find("bad.csv: line 3: 3 fields, the header has 2"),
            std::string::npos);
  std::string latin1 = temp_file("latin1.csv", "a\nd\xE9j\xE0\n");
  EXPECT_NE(error_of([&] { bamba::read_records(latin1); }).find("latin1.csv is not valid UTF-8"), std::string::npos)
      << error_of([&] { bamba::read_records(latin1); });
  std::string tsv = temp_file("t.TSV", "x\ty\n1,5\t\"q\"\n");
  EXPECT_EQ(bamba::read_records(tsv), std::vector<Json>{Json::parse(R"({"x": "1,5", "y": "q"})")});
}

TEST(Records, JsonlAndJson) {
  std::string path = temp_file("math.jsonl", "{\"problem\": \"1+1\", \"level\": 1}\n\n  \r\n{\"problem\": \"2\"}\r\n");
  std::vector<Json> rows = bamba::read_records(path);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["level"], 1);
  EXPECT_EQ(rows[1]["problem"], "2");
  std::string bad = temp_file("bad.jsonl", "{\"a\": 1}\n\n{\"a\": \n");
  EXPECT_NE(error_of([&] { bamba::read_records(bad); }).find("bad.jsonl: line 3: not valid JSON"), std::string::npos);
  std::string arr = temp_file("arr.jsonl", "[1, 2]\n");
  EXPECT_NE(error_of([&] { bamba::read_records(arr); }).find("line 1: expected a JSON object"), std::string::npos);

  // Gzipped JSONL (made by gzip(1), not by bamba's reader).
  std::string plain = temp_file("z.jsonl", "{\"a\": \"\u00e9\"}\n{\"a\": 2}\n");
  ASSERT_EQ(std::system(("gzip -kf " + plain).c_str()), 0);
  std::vector<Json> gz = bamba::read_records(plain + ".gz");
  ASSERT_EQ(gz.size(), 2u);
  EXPECT_EQ(gz[0]["a"], "\xC3\xA9");

  EXPECT_EQ(bamba::read_records(temp_file("a.json", R"([{"k": 1}, {"k": 2}])")).size(), 2u);
  EXPECT_EQ(bamba::read_records(temp_file("d.json", R"({"version": 1, "data": [{"k": 1}]})"))[0]["k"], 1);
  EXPECT_EQ(bamba::read_records(temp_file("r.json", R"({"rows": [{"k": 3}]})"))[0]["k"], 3);
  EXPECT_NE(error_of([] { bamba::read_records(temp_file("e.json", R"([{"k": 1}, 2])")); }).find("element 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { bamba::read_records(temp_file("x.arrow", "")); }).find("unknown dataset format '.arrow'"),
            std::string::npos);
  EXPECT_NE(error_of([] { bamba::read_records("/nonexistent/x.jsonl"); }).find("/nonexistent/x.jsonl"),
            std::string::npos);
}

}  // namespace
