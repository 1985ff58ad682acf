#!/usr/bin/env python3
"""The recipe's corpora, from Debian packages (examples/recipe/README.md lists them and their licenses).

usage: corpora.py OUT [--max-mb N]

Writes, deterministically (no randomness except a fixed seed):
  OUT/raw/<dataset>/train.jsonl      {"text": ...} one document per line: what the tokenizer and the model train on
  OUT/raw/<dataset>/heldout.jsonl    documents kept out of training: the per-dataset perplexity tasks read them
  OUT/tasks/define.jsonl             WordNet definition -> word, 4 choices, from held-out synsets only
  OUT/tasks/kjv_next.jsonl           first half of a held-out KJV verse -> its second half, 4 choices
  OUT/summary.json                   documents and bytes per dataset and split

Only the Python standard library: this runs on any Debian machine after `apt-get install` of the packages that
corpora.sh installs. The product never needs Python; this script only reads Debian's files into JSONL.
"""
import base64, gzip, json, os, random, re, subprocess, sys

WORDNET = "/usr/share/wordnet"
DEVIL = "/usr/share/dictd/devil"
PYDOC = "/usr/share/doc/python3.11/html/_sources"
PYLIB = "/usr/lib/python3.11"
SEED = 20261206


def kjv():
    """One document per chapter, "Book C:V text" lines as the bible program prints them."""
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters, verses = {}, []
    for line in out.splitlines():
        m = re.match(r"^(\S+?)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        book, ch, vs, text = m.groups()
        chapters.setdefault((book, int(ch)), []).append(text)
        verses.append((book, int(ch), int(vs), text))
    docs = [f"{b} {c}\n" + "\n".join(f"{i + 1} {t}" for i, t in enumerate(v)) for (b, c), v in chapters.items()]
    keys = list(chapters)
    return docs, keys, verses


def wordnet():
    """Synsets as dictionary entries: 'lemma, lemma (pos.): gloss'. Entries grouped 40 to a document."""
    pos_name = {"n": "n.", "v": "v.", "a": "adj.", "s": "adj.", "r": "adv."}
    entries = []  # (pos, [lemmas], gloss)
    for part in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(WORDNET, "data." + part), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # the license header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                pos, n = fields[2], int(fields[3], 16)
                lemmas = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(n)]
                entries.append((pos_name[pos], lemmas, gloss.strip()))
    return entries


def devil():
    """The Devil's Dictionary, one entry per document, located through the dictd index."""
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    num = lambda s: sum(b64.index(c) * 64 ** i for i, c in enumerate(reversed(s)))
    data = gzip.open(DEVIL + ".dict.dz").read().decode("latin-1")
    docs = []
    with open(DEVIL + ".index", encoding="latin-1") as f:
        for line in f:
            word, off, size = line.rstrip("\n").split("\t")
            if word.startswith("00database"):
                continue
            docs.append(data[num(off):num(off) + num(size)].strip())
    return docs


def files(root, suffix, skip=()):
    out = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in skip)
        out += [os.path.join(d, n) for n in sorted(names) if n.endswith(suffix)]
    return out


def read_texts(paths, max_bytes):
    docs, total = [], 0
    for p in paths:
        try:
            t = open(p, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are not UTF-8 (test data): skip them
        if not t.strip() or total + len(t) > max_bytes:
            continue
        docs.append(t)
        total += len(t)
    return docs


def split(docs, every):
    """Every `every`-th document is held out: deterministic and spread over the whole corpus."""
    return [d for i, d in enumerate(docs) if i % every], [d for i, d in enumerate(docs) if i % every == 0]


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    max_mb = float(sys.argv[sys.argv.index("--max-mb") + 1]) if "--max-mb" in sys.argv else 12
    cap = int(max_mb * 1e6)
    rng = random.Random(SEED)
    summary = {}

    def emit(name, train, held):
        write_jsonl(f"{out}/raw/{name}/train.jsonl", ({"text": t} for t in train))
        write_jsonl(f"{out}/raw/{name}/heldout.jsonl", ({"text": t} for t in held))
        summary[name] = {"train_docs": len(train), "train_bytes": sum(len(t.encode()) for t in train),
                         "heldout_docs": len(held), "heldout_bytes": sum(len(t.encode()) for t in held)}
        print(f"{name:8} {len(train):6} train docs {summary[name]['train_bytes'] / 1e6:7.2f} MB, "
              f"{len(held):4} held out", flush=True)

    # prose: KJV chapters; every 40th chapter held out, and its verses feed the kjv_next task
    docs, keys, verses = kjv()
    train, held = split(docs, 40)
    emit("kjv", train, held)
    held_keys = set(keys[i] for i in range(0, len(keys), 40))
    hv = [v[3] for v in verses if (v[0], v[1]) in held_keys and len(v[3].split()) >= 10]
    halves = []
    for t in hv:
        w = t.split()
        cut = len(w) // 2
        halves.append((" ".join(w[:cut]), " ".join(w[cut:])))
    kjv_rows = []
    for i, (a, b) in enumerate(halves):
        others = rng.sample([h[1] for j, h in enumerate(halves) if j != i], 3)
        choices = others + [b]
        rng.shuffle(choices)
        kjv_rows.append({"context": a, "choices": choices, "label": choices.index(b)})

    # reference: WordNet; every 50th synset held out, and the define task draws from those
    entries = wordnet()
    fmt = lambda e: f"{', '.join(e[1])} ({e[0]}): {e[2]}"
    train_e = [e for i, e in enumerate(entries) if i % 50]
    held_e = [e for i, e in enumerate(entries) if i % 50 == 0]
    group = lambda es: ["\n".join(fmt(e) for e in es[i:i + 40]) for i in range(0, len(es), 40)]
    emit("wordnet", group(train_e), group(held_e))
    define_rows = []
    by_pos = {}
    for e in held_e:
        by_pos.setdefault(e[0], []).append(e)
    for e in held_e:
        gloss = e[2].split(";")[0].strip()  # the definition without its "examples"
        word = e[1][0]
        if len(gloss) < 12 or " " in word:
            continue
        pool = [x[1][0] for x in by_pos[e[0]] if x[1][0] != word and " " not in x[1][0]]
        choices = rng.sample(pool, 3) + [word]
        rng.shuffle(choices)
        define_rows.append({"definition": gloss, "pos": e[0], "choices": choices, "label": choices.index(word)})

    # high-quality prose: the Devil's Dictionary (small: it only enters the annealing mixture)
    emit("devil", *split(devil(), 25))
    # technical docs: the Python 3.11 documentation sources (reStructuredText)
    emit("pydoc", *split(read_texts(files(PYDOC, ".rst.txt"), cap), 30))
    # code: the Python 3.11 standard library, without its test suites
    emit("pycode", *split(read_texts(files(PYLIB, ".py", skip={"test", "tests", "idle_test", "site-packages",
                                                               "dist-packages", "__pycache__"}), cap), 30))

    write_jsonl(f"{out}/tasks/define.jsonl", define_rows)
    write_jsonl(f"{out}/tasks/kjv_next.jsonl", kjv_rows)
    summary["tasks"] = {"define": len(define_rows), "kjv_next": len(kjv_rows)}
    print(f"tasks: define {len(define_rows)} rows, kjv_next {len(kjv_rows)} rows")
    with open(f"{out}/summary.json", "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
