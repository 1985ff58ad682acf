// Writes tests/data/bpe/ files from HF tokenizers' Node binding: the merges its default BpeTrainer learns from
// corpus.txt with each split regex, and the ids it encodes texts to with a tokenizer.json that bamba trained.
const { Tokenizer } = require('tokenizers');
const fs = require('fs');
const [DEV, OUTDIR] = process.argv.slice(2);
const PAT = {
  gpt2: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
  llama3: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
(async () => {
  for (const split of ['gpt2', 'llama3']) {
    const t = Tokenizer.fromString(JSON.stringify({
      version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
      pre_tokenizer: { type: 'Sequence', pretokenizers: [
        { type: 'Split', pattern: { Regex: PAT[split] }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
      post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
               fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab: {}, merges: [] } }));
    t.train([`${OUTDIR}/corpus.txt`]);
    t.save('/tmp/bpe/node/tmp.json');
    const m = JSON.parse(fs.readFileSync('/tmp/bpe/node/tmp.json', 'utf8')).model.merges;
    const merges = m.map((x) => (typeof x === 'string' ? x.split(' ') : x));
    fs.writeFileSync(`${OUTDIR}/hf_default_corpus_${split}.json`, JSON.stringify({ merges }) + '\n');
  }
  const tok = Tokenizer.fromFile(`${DEV}/corpus_llama3.json`);
  const texts = fs.readFileSync(`${DEV}/texts.jsonl`, 'utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l));
  const lines = [];
  for (const text of texts.slice(0, 300)) {
    const ids = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    lines.push(JSON.stringify({ text, ids_with_bos: ids }));
  }
  fs.writeFileSync(`${OUTDIR}/hf_ids_corpus_llama3.jsonl`, lines.join('\n') + '\n');
})();
