# Checks bamba's BPE trainer against HF tokenizers: (a) HF loads each tokenizer.json bamba wrote and encodes the
# test strings to the ids `bamba tokenize` gave; (b) HF's BpeTrainer on the same corpus and settings gives the
# same vocab and merges. Writes results.json and HF's own trained files to OUT.
import json, os, sys, time, traceback
import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex

OUT = sys.argv[1]
PATTERNS = {
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
texts = [json.loads(l) for l in open("texts.jsonl", encoding="utf-8")]
res = {"tokenizers_version": tokenizers.__version__, "n_texts": len(texts), "configs": {}}


def norm_merges(m):
    return [tuple(x.split(" ", 1)) if isinstance(x, str) else tuple(x) for x in m]


for c in json.load(open("configs.json")):
    name = c["name"]
    r = res["configs"][name] = {}
    try:
        # (a) HF loads our file and encodes the texts as bamba did
        ours = Tokenizer.from_file(name + ".json")
        for add, suffix in ((False, ""), (True, "_bos")):
            want = [json.loads(l) for l in open(f"ids_{name}{suffix}.jsonl")]
            got = [e.ids for e in ours.encode_batch(texts, add_special_tokens=add)]
            bad = [i for i in range(len(texts)) if got[i] != want[i]]
            r[f"encode{suffix}_mismatches"] = len(bad)
            r[f"encode{suffix}_examples"] = [{"text": texts[i], "hf": got[i], "bamba": want[i]} for i in bad[:3]]
            r[f"encode{suffix}_total_ids"] = sum(len(g) for g in got)
        r["decode_ok"] = all(ours.decode(ours.encode(t, add_special_tokens=False).ids, skip_special_tokens=False) == t
                             for t in texts)
        # (b) HF trains on the same corpus
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PATTERNS[c["split"]]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        tr = trainers.BpeTrainer(vocab_size=c["vocab"], min_frequency=c["minf"], special_tokens=c["specials"],
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        t0 = time.time()
        if c["jsonl"]:
            docs = [json.loads(l)["text"] for f in c["files"] for l in open(f, encoding="utf-8") if l.strip()]
            tok.train_from_iterator(docs, tr)
        else:
            tok.train(c["files"], tr)
        r["hf_train_seconds"] = round(time.time() - t0, 2)
        hf = json.loads(tok.to_str())
        mine = json.load(open(name + ".json"))
        hv, mv = hf["model"]["vocab"], mine["model"]["vocab"]
        hm, mm = norm_merges(hf["model"]["merges"]), norm_merges(mine["model"]["merges"])
        r["vocab_sizes"] = [len(hv), len(mv)]
        r["merges_counts"] = [len(hm), len(mm)]
        r["vocab_equal"] = hv == mv
        r["merges_equal"] = hm == mm
        first = next((i for i in range(min(len(hm), len(mm))) if hm[i] != mm[i]), None)
        r["first_merge_diff"] = None if first is None else {"index": first, "hf": hm[first:first + 5], "bamba": mm[first:first + 5]}
        r["vocab_diff_examples"] = [[k, hv.get(k), mv.get(k)] for k in list(set(hv) ^ set(mv))[:5]] + \
            [[k, hv[k], mv[k]] for k in hv if k in mv and hv[k] != mv[k]][:5]
        r["hf_added_tokens"] = hf["added_tokens"]
        if os.path.getsize(c["files"][0]) < 1_000_000:
            with open(os.path.join(OUT, f"hf_{name}.json"), "w", encoding="utf-8") as f:
                json.dump({"vocab": hv, "merges": [list(m) for m in hm]}, f, ensure_ascii=False)
        # HF's trained tokenizer also encodes the texts like ours (it should, if vocab+merges are equal)
        tok.add_special_tokens([])
        r["hf_trained_encode_equal"] = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)] == \
            [json.loads(l) for l in open(f"ids_{name}.jsonl")]
    except Exception:
        r["exception"] = traceback.format_exc()
    print(name, json.dumps({k: v for k, v in r.items() if k not in ("hf_added_tokens",)}, ensure_ascii=False)[:1500])

json.dump(res, open(os.path.join(OUT, "results.json"), "w"), indent=1, ensure_ascii=False)
