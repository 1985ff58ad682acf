// bamba tokenizer train: a byte-level BPE tokenizer.json learned from text and JSONL files (docs/data.md).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/document_reader.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"

namespace bamba::cli {

namespace {

struct TrainArgs {
  std::vector<std::string> inputs, special_tokens;
  std::string out = "tokenizer.json", split = "gpt2", bos, format = "auto", field = "text";
  int64_t vocab_size = 0, min_frequency = 0;
  int threads = 0;
  bool quiet = false;
};

constexpr size_t kBatchBytes = size_t(16) << 20;  // text per counting round

void train(const TrainArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  BpeTrainerOptions opt;
  opt.vocab_size = a.vocab_size;
  opt.min_frequency = a.min_frequency;
  opt.special_tokens = a.special_tokens;
  opt.split_pattern = split_pattern_for(a.split);
  opt.threads = a.threads;
  opt.progress = !a.quiet;
  if (!a.bos.empty() && std::find(a.special_tokens.begin(), a.special_tokens.end(), a.bos) == a.special_tokens.end())
    fail("--bos \"", a.bos, "\" must also be one of --special-tokens");
  BpeTrainer trainer(opt);

  // HF trains on a text file line by line (each with its "\n"), and on a JSONL record's text as one sequence.
  const std::vector<InputFile> files = list_input_files(a.inputs, a.format);
  uint64_t total = 0, done = 0, sequences = 0;
  for (const InputFile& f : files) total += f.bytes;
  {
    ProgressBar bar("counting words", total, !a.quiet);
    std::vector<std::string> texts;
    std::vector<std::string_view> views;
    size_t batch_bytes = 0;
    auto flush = [&] {
      views.assign(texts.begin(), texts.end());
      trainer.feed(views);
      sequences += texts.size();
      texts.clear();
      batch_bytes = 0;
    };
    std::string text;
    for (const InputFile& f : files) {
      DocumentReader reader(f, a.field, DocumentReader::TextUnit::line);
      while (reader.next(text)) {
        batch_bytes += text.size();
        texts.push_back(text);
        if (batch_bytes >= kBatchBytes) {
          flush();
          bar.update(done + reader.bytes_read(), cat(trainer.distinct_words(), " distinct words"));
        }
      }
      done += f.bytes;
    }
    flush();
  }
  const double t_count = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  TrainedBpe model = trainer.train();
  const double t_total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::string json = bpe_tokenizer_json(model, opt.split_pattern, a.bos);
  Tokenizer::from_json(json, a.out);  // what we write must load: a last check of the writer
  const std::string tmp = a.out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) fail(tmp, ": cannot create");
    f << json;
    if (!f.flush()) fail(tmp, ": write failed");
  }
  std::filesystem::rename(tmp, a.out);
  if (!a.quiet)
    std::fprintf(stderr,
                 "%s: %zu tokens (%zu special, 256 bytes, %zu merges) from %llu sequences, %zu distinct words, %s "
                 "of text in %zu file(s); counting %.1fs, merging %.1fs\n",
                 a.out.c_str(), model.vocab.size(), model.n_special, model.merges.size(),
                 (unsigned long long)sequences, model.n_words, human_bytes(double(total)).c_str(), files.size(),
                 t_count, t_total - t_count);
}

}  // namespace

void register_tokenizer(CLI::App& app) {
  CLI::App* tok = app.add_subcommand("tokenizer", "Tokenizer tools: train");
  tok->require_subcommand(1);
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = tok->add_subcommand(
      "train", "Learn a byte-level BPE tokenizer.json from text / JSONL files, as HF tokenizers' BpeTrainer does");
  cmd->add_option("inputs", a->inputs, "Text or JSONL files, or folders of them")->required();
  cmd->add_option("--out,-o", a->out, "The tokenizer.json to write")->capture_default_str();
  cmd->add_option("--vocab-size", a->vocab_size, "Tokens in all: special tokens + 256 bytes + merges")->required();
  cmd->add_option("--min-frequency", a->min_frequency, "Stop when the best pair occurs fewer times")
      ->capture_default_str();
  cmd->add_option("--special-tokens", a->special_tokens, "Special tokens, ids 0.. in this order (comma-separated)")
      ->delimiter(',');
  cmd->add_option("--bos", a->bos, "A special token the post-processor puts in front of every encoded text");
  cmd->add_option("--split", a->split, "Pre-tokenizer regex: gpt2, llama3 or a PCRE pattern")->capture_default_str();
  cmd->add_option("--format", a->format, "auto (.jsonl is JSONL), text or jsonl")->capture_default_str();
  cmd->add_option("--field", a->field, "The JSONL field holding the text")->capture_default_str();
  cmd->add_option("--threads", a->threads, "Threads counting words (0: all cores)")->capture_default_str();
  cmd->add_flag("--quiet,-q", a->quiet, "No progress or summary");
  cmd->callback([a] { train(*a); });
}

}  // namespace bamba::cli
